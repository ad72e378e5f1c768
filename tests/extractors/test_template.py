"""What the template (refam.extractors.template.DiTExtractor) does for every backbone, beyond the
contract, checked on the tiny SD3.5: a weights variant is the files that are loaded and a key of the
map cache; `shift: true` on a variance-preserving scheduler is refused."""

import pytest
import torch

from refam.errors import CheckpointError, ConfigError
from refam.extractors.sd3 import SD3Extractor
from refam.extractors.trajectory import NoiseAt, RFInversion
from refam.testing.tiny_sd3 import build_tiny_sd3

SETTINGS = dict(torch_dtype="float32", resolution=64, keep_aspect=True, caption_max_tokens=16)


def _loaded(folder, **settings) -> SD3Extractor:
    extractor = SD3Extractor(str(folder), **SETTINGS, **settings)
    extractor.setup(torch.device("cpu"))
    return extractor


def _same_weights(module, other) -> bool:
    ours, theirs = module.state_dict(), other.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_a_weights_variant_is_loaded_and_keyed(tmp_path):
    """`variant` loads the files save_pretrained(variant=...) writes (*.fp16.safetensors), not the plain
    ones beside them; a folder holding only a variant is refused without it, in one line naming
    pretrained; and since the folder is the same model either way, the map cache tells the two
    apart by the variant alone."""
    folder = tmp_path / "pipe"
    fp16 = build_tiny_sd3(seed=1)
    fp16.save_pretrained(folder, safe_serialization=True, variant="fp16")
    assert list(folder.glob("transformer/*.fp16.safetensors")) and not list(folder.glob("transformer/*model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        _loaded(folder)
    assert error.value.field == "pretrained" and "\n" not in str(error.value)

    plain = build_tiny_sd3(seed=0)
    plain.save_pretrained(folder, safe_serialization=True)
    variant, default = _loaded(folder, variant="fp16"), _loaded(folder)
    assert not _same_weights(plain.transformer, fp16.transformer)
    for name in ("transformer", "vae", "text_encoder_3"):
        assert _same_weights(getattr(variant.pipe, name), getattr(fp16, name))
        assert _same_weights(getattr(default.pipe, name), getattr(plain, name))

    assert variant.load_kwargs() == {"variant": "fp16"} and variant.cache_key_settings()["settings"]["variant"] == "fp16"
    assert default.load_kwargs() == {}
    keys, other = variant.cache_key_settings(), default.cache_key_settings()
    assert keys["model"] == other["model"]  # one folder
    assert {name for name in keys if keys[name] != other[name]} == {"settings"}
    assert {name for name in keys["settings"] if keys["settings"][name] != other["settings"][name]} == {"variant"}


@pytest.mark.parametrize("trajectory", [NoiseAt(0.5, shift=True), RFInversion(steps=2, shift=True)], ids=["noise-at", "rf-inversion"])
def test_a_shift_on_a_variance_preserving_scheduler_is_refused_naming_shift(tmp_path, trajectory):
    """A VP scheduler (PixArt's DPM-Solver: `alphas_cumprod`, no flow sigmas) has no flow shift; the
    default `noise_shift` must not read its missing `shift` as 1 and accept `shift: true` as an
    identity. The same model on its flow scheduler accepts it."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = build_tiny_sd3()
    flow = tmp_path / "flow"
    pipe.save_pretrained(flow, safe_serialization=True)
    assert _loaded(flow, trajectory=trajectory).noise_shift(16)(0.5) == pytest.approx(0.75)  # SD3's static shift 3
    pipe.register_modules(scheduler=DPMSolverMultistepScheduler())
    vp = tmp_path / "vp"
    pipe.save_pretrained(vp, safe_serialization=True)
    with pytest.raises(ConfigError, match=r"^trajectory\.shift: SD3Extractor .*shift: false$") as raised:
        _loaded(vp, trajectory=trajectory)
    assert raised.value.field == "shift" and "\n" not in str(raised.value)
    assert _loaded(vp, trajectory=NoiseAt(0.5)).noise_shift(16) is None
