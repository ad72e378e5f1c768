"""refam: zero-shot referring segmentation with diffusion-transformer attention (REFAM).

`from refam import RefAM` is the Python API (see `refam.api`); it is imported on first use so that
`import refam` stays cheap for the CLI and the data tools.
"""


def __getattr__(name: str):
    if name == "RefAM":
        from refam.api import RefAM

        return RefAM
    raise AttributeError(f"module 'refam' has no attribute {name!r}")
