"""What ships inside the package so that refam runs offline from any folder, installed or checked out:
the refam-shapes model (a diffusers FLUX folder, `refam-shapes/`) and the default pipeline that runs
it (`refam-shapes.yaml`, the `model:` section that `RefAM.load()`, `refam predict` and
`configs/demo.yaml` use). A config names the model as `embedded:refam-shapes`."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
FOLDER = Path(__file__).resolve().parent
REFAM_SHAPES = FOLDER / "refam-shapes"
REFAM_SHAPES_VIDEO = FOLDER / "refam-shapes-video"  # a diffusers Mochi folder (refam.shapes.train_video)
DEFAULT_MODEL_SECTION = FOLDER / "refam-shapes.yaml"
DEFAULT_VIDEO_MODEL_SECTION = FOLDER / "refam-shapes-video.yaml"
DEFAULT_VIDEO_CONFIG = FOLDER / "default-video.yaml"  # what a video runs on without a config
DEFAULT_CONFIG = FOLDER / "default.yaml"  # a config whose `model:` is DEFAULT_MODEL_SECTION


def resolve_embedded(pretrained: str) -> str:
    """`embedded:NAME` -> the folder NAME shipped in this package; any other value unchanged."""
    if isinstance(pretrained, str) and pretrained.startswith(EMBEDDED_PREFIX):
        return str(FOLDER / pretrained[len(EMBEDDED_PREFIX):])
    return pretrained
