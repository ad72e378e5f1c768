"""The `offload` setting (refam.extractors.offload): every mode gives the maps of "none", and the
"model" mode never holds the text encoders and the denoiser on the device together. This machine has
no GPU, so the device and the offload device are both the CPU here: what is checked is the hooks,
the order of the moves and the results; bench/offload.py works out the bytes for FLUX.1-dev."""

import pytest
import torch
from diffusers.hooks.group_offloading import _get_group_onload_device, _is_group_offload_enabled
from PIL import Image
from torch import nn

from refam.aggregators.magnets import AppendMagnets
from refam.errors import ConfigError
from refam.extractors.flux import FluxExtractor
from refam.extractors.mochi import MochiExtractor
from refam.extractors.offload import Placement
from refam.testing.tiny_mochi import save_tiny_mochi

MAGNETS = AppendMagnets()
EXPRESSIONS = [MAGNETS.augment(e) for e in ("the red dog on the left", "a man")]
IMAGE = Image.new("RGB", (96, 80), (40, 90, 160))


def _flux(folder, offload):
    extractor = FluxExtractor(str(folder), torch_dtype="float32", resolution=64, caption_max_tokens=16, offload=offload)
    extractor.setup(torch.device("cpu"))
    return extractor


@pytest.fixture(scope="module")
def reference(tiny_flux_dir):
    return _flux(tiny_flux_dir, "none").extract(IMAGE, "a dog and a man", EXPRESSIONS, "s1")


@pytest.mark.parametrize("offload", ["text_encoders", "model", "group"])
def test_every_offload_mode_gives_the_maps_of_none(tiny_flux_dir, reference, offload):
    maps = _flux(tiny_flux_dir, offload).extract(IMAGE, "a dog and a man", EXPRESSIONS, "s1")
    assert maps.valid.equal(reference.valid)
    torch.testing.assert_close(maps.scores, reference.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps.text_mass, reference.text_mass, rtol=1e-5, atol=1e-6)


def _hooked_modules(module):
    return [m for m in module.modules() if "group_offloading" in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})]


def test_group_mode_hooks_the_transformer_and_both_text_encoders(tiny_flux_dir, reference):
    extractor = _flux(tiny_flux_dir, "group")
    pipe = extractor.pipe
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        assert _is_group_offload_enabled(module)
    assert not _is_group_offload_enabled(pipe.vae)
    hooked = _hooked_modules(pipe.transformer)
    assert len(hooked) > 2  # the blocks, one group each
    assert _get_group_onload_device(pipe.transformer) == torch.device("cpu")
    extractor.setup(torch.device("cpu", 0))  # another device (the only other one here): hooks replaced
    assert _get_group_onload_device(pipe.transformer) == torch.device("cpu", 0)
    assert _hooked_modules(pipe.transformer) == hooked
    assert all(list(m._diffusers_hook.hooks).count("group_offloading") == 1 for m in hooked)
    maps = extractor.extract(IMAGE, "a dog and a man", EXPRESSIONS, "s1")
    torch.testing.assert_close(maps.scores, reference.scores, rtol=1e-5, atol=1e-6)


def test_group_mode_on_mochi_gives_the_maps_of_none(tmp_path):
    folder = save_tiny_mochi(tmp_path / "mochi")
    frames = [Image.new("RGB", (80, 48), (10 * i, 90, 160)) for i in range(7)]
    maps = {}
    for offload in ("none", "group"):
        extractor = MochiExtractor(str(folder), torch_dtype="float32", height=48, width=80, clip_frames=7,
                                   caption_max_tokens=16, offload=offload)
        extractor.setup(torch.device("cpu"))
        maps[offload] = extractor.extract_video(frames, "a dog", EXPRESSIONS, "v1")
    assert _is_group_offload_enabled(extractor.pipe.transformer)
    torch.testing.assert_close(maps["group"].scores, maps["none"].scores, rtol=1e-5, atol=1e-6)


class _Recorder(nn.Linear):
    """A module that logs where it is sent (and stays put: there is one real device here)."""

    def __init__(self, name, log):
        super().__init__(2, 2)
        self.name, self.log = name, log

    def to(self, *args, **kwargs):
        self.log.append((self.name, torch.device(args[0]).type))
        return self


def test_model_mode_swaps_text_encoders_and_denoiser_leaving_ones_first():
    log = []
    t5, clip, denoiser, vae = (_Recorder(name, log) for name in ("t5", "clip", "denoiser", "vae"))
    # "meta" stands in for the accelerator
    placement = Placement("model", torch.device("meta"), [clip, t5], denoiser, [vae], offload_device=torch.device("cpu"))
    placement.apply()
    assert log == [("vae", "meta"), ("clip", "cpu"), ("t5", "cpu"), ("denoiser", "cpu")]
    for phase, expected in [
        ("text", [("denoiser", "cpu"), ("clip", "meta"), ("t5", "meta")]),
        ("text", []),  # already there: nothing moves
        ("denoise", [("clip", "cpu"), ("t5", "cpu"), ("denoiser", "meta")]),
        ("denoise", []),
        ("text", [("denoiser", "cpu"), ("clip", "meta"), ("t5", "meta")]),
    ]:
        log.clear()
        placement.enter(phase)
        assert log == expected, phase
    assert placement.text_device == torch.device("meta")


def test_text_encoders_mode_computes_text_on_the_offload_device():
    modules = [nn.Linear(2, 2) for _ in range(3)]
    placement = Placement("text_encoders", torch.device("meta"), modules[:2], modules[2], [])
    placement.apply()
    assert placement.text_device == torch.device("cpu")
    assert all(p.device.type == "cpu" for m in modules[:2] for p in m.parameters())
    assert all(p.device.type == "meta" for p in modules[2].parameters())
    placement.enter("denoise")  # no moves outside the "model" mode
    assert all(p.device.type == "cpu" for m in modules[:2] for p in m.parameters())


def test_extract_enters_text_then_denoise(tiny_flux_dir, monkeypatch):
    extractor = _flux(tiny_flux_dir, "model")
    phases = []
    enter = Placement.enter
    monkeypatch.setattr(Placement, "enter", lambda self, phase: (phases.append(phase), enter(self, phase))[1])
    extractor.extract(IMAGE, "a dog", EXPRESSIONS, "s1")
    assert phases[0] == "text" and phases[-1] == "denoise"
    assert phases.index("denoise") > max(i for i, p in enumerate(phases) if p == "text")


def test_a_bad_offload_mode_is_a_config_error_naming_the_field(tiny_flux_dir):
    with pytest.raises(ConfigError, match=r"^offload: .*'none'.*'group'") as raised:
        FluxExtractor(str(tiny_flux_dir), offload="cpu")
    assert raised.value.field == "offload"


def test_a_pipeline_given_in_memory_extracts_like_the_folder_and_is_never_cached(tiny_flux_dir, reference):
    from diffusers import FluxPipeline

    extractor = FluxExtractor("<in memory>", torch_dtype="float32", resolution=64, caption_max_tokens=16)
    assert extractor.cache_key_settings() is not None
    extractor.use_pipeline(FluxPipeline.from_pretrained(str(tiny_flux_dir)), torch.device("cpu"))
    assert extractor.cache_key_settings() is None  # nothing names its weights: the map cache must not reuse maps
    maps = extractor.extract(IMAGE, "a dog and a man", EXPRESSIONS, "s1")
    torch.testing.assert_close(maps.scores, reference.scores, rtol=1e-5, atol=1e-6)
