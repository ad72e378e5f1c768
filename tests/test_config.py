"""Components record the arguments they were built with (issue O point 2), and the map cache's key
reads that record: no setting of an extractor can be left out of the key."""

import inspect

import pytest

from refam.config import Configurable
from refam.extractors.base import Extractor
from refam.extractors.trajectory import NoiseAt, RFInversion


class Inner(Configurable):
    def __init__(self, size: int, seed: int = 0, scale: float = 1.0) -> None:
        self.size, self.seed = size, seed * 2  # an attribute that is not the argument as given


class Outer(Inner):
    def __init__(self, size: int, mode: str = "a", **settings) -> None:
        super().__init__(size, **settings)
        self.mode = mode


def test_the_record_holds_given_arguments_and_every_default_of_the_chain():
    outer = Outer(3, seed=5)
    assert outer.init_args == {"size": 3, "mode": "a", "seed": 5, "scale": 1.0}
    assert Outer(size=4, mode="b", scale=2.0).init_args == {"size": 4, "mode": "b", "seed": 0, "scale": 2.0}
    outer.init_args["size"] = 99  # a copy
    assert outer.init_args["size"] == 3


def test_settings_are_the_values_the_component_now_holds():
    outer = Outer(3, seed=5)
    assert outer.settings() == {"size": 3, "mode": "a", "seed": 10, "scale": 1.0}
    outer.mode = "changed"  # a caller changed it after building: the key must see that
    assert outer.settings(leave_out=("size",)) == {"mode": "changed", "seed": 10, "scale": 1.0}


def _extractor_classes():
    import refam.extractors.cogvideox, refam.extractors.flux, refam.extractors.flux2, refam.extractors.mochi  # noqa: E401,F401
    import refam.extractors.qwenimage, refam.extractors.sd3, refam.extractors.wan  # noqa: E401,F401
    import refam.extractors.lumina2, refam.extractors.zimage  # noqa: E401,F401

    found, stack = [], [Extractor]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not inspect.isabstract(cls) and cls.__module__.startswith("refam.extractors"):
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    import refam.identity

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub ids below are resolved from the (empty) cache
    refam.identity.hub_revision.cache_clear()


@pytest.mark.parametrize("cls", _extractor_classes(), ids=lambda c: c.__name__)
def test_every_constructor_argument_of_every_backbone_is_in_the_map_cache_key(cls, offline):
    from refam.config import _constructor_parameters

    extractor = cls.__new__(cls, "some/model")  # the record alone: no weights, no checks
    names = {p.name for p in _constructor_parameters(cls)}
    recorded = set(extractor.init_args)
    assert names <= recorded
    accounted = {"pretrained", "offload", "local_files_only"}  # the model's identity, the text encoders' place
    extractor.__dict__.update({name: value for name, value in extractor.init_args.items()})
    extractor.device = __import__("torch").device("cpu")
    extractor.given_pipeline = False
    settings = cls.cache_key_settings(extractor)["settings"]
    assert names - accounted <= set(settings), f"{cls.__name__}: {sorted(names - accounted - set(settings))} not in the key"


def test_trajectories_are_described_by_their_record():
    from refam.extractors.cache import describe

    assert describe(NoiseAt(0.5, shift=True)) == {"class": "refam.extractors.trajectory.NoiseAt", "sigma": 0.5, "shift": True}
    inversion = describe(RFInversion())
    assert set(inversion) - {"class"} == set(RFInversion().init_args)


def test_a_pipeline_section_read_from_the_records_builds_the_same_pipeline():
    """What a saved run holds (`refam serve`'s run.json): every component's entry from its record,
    nested components included; built again, it gives the same records."""
    from refam.aggregators.magnets import RandomVectorMagnets
    from refam.aggregators.spatial import DirectionPrior
    from refam.sections import build_pipeline, model_section

    pipeline = build_pipeline(model_section(None)).with_settings(
        magnets=RandomVectorMagnets(count=3, seed=2), spatial_bias=[DirectionPrior(vertical=True)], key_frame="confident")
    section = pipeline.model_section()
    again = build_pipeline(section)
    assert again.model_section() == section
    assert again.magnets.count == 3 and again.spatial_bias[0].vertical and again.key_frame == "confident"
    assert section["extractor"]["init_args"]["trajectory"]["class_path"] == "refam.extractors.trajectory.NoiseAt"


def test_the_weights_identity_reads_the_record(tmp_path):
    from refam.identity import weights_identity

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"some weights")

    class Segmenter(Configurable):
        def __init__(self, checkpoint: str) -> None:
            self.path = checkpoint  # kept under another name: only the record names it as `checkpoint`

    assert list(weights_identity(Segmenter(str(weights)))) == ["0.Segmenter.checkpoint"]
