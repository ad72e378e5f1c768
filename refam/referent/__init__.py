"""The no-referent flag: whether an expression may name nothing in the image, read from its maps
(`statistics`), at an operating point chosen on calibration scenes (`operating_point`), as a model's
`no_referent.json` gives it (`calibration`). docs/refam-shapes.md says how it was measured."""
