"""refam-shapes: procedural scenes and a small FLUX-architecture model trained on them."""
