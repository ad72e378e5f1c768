"""What the template (refam.extractors.template.DiTExtractor) does for every backbone, beyond the
contract, checked on the tiny SD3.5: a weights variant is the files that are loaded and a key of the
map cache."""

import pytest
import torch

from refam.errors import CheckpointError
from refam.extractors.sd3 import SD3Extractor
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
