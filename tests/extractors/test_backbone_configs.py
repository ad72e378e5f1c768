"""Every backbone config (configs/backbones/*.yaml) builds the real checkpoint's extractor: its
extractor section parsed and built as `refam test` builds it (nothing loaded), at the paper's
noise level, with the checkpoint's hub id and its pipeline's own settings."""

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from refam.extractors.base import Extractor
from refam.extractors.chroma import ChromaExtractor
from refam.extractors.cogvideox import CogVideoXExtractor
from refam.extractors.cogview4 import CogView4Extractor
from refam.extractors.flux2 import Flux2Extractor
from refam.extractors.hidream import HiDreamExtractor
from refam.extractors.hunyuanimage import HunyuanImageExtractor
from refam.extractors.hunyuanvideo import HunyuanVideoExtractor
from refam.extractors.hunyuanvideo15 import HunyuanVideo15Extractor
from refam.extractors.pixart import PixArtSigmaExtractor
from refam.extractors.kandinsky6 import Kandinsky6Extractor
from refam.extractors.ltx2 import LTX2Extractor
from refam.extractors.lumina2 import Lumina2Extractor
from refam.extractors.qwenimage import QwenImageExtractor
from refam.extractors.qwenimage21 import QwenImage21Extractor
from refam.extractors.sana import SanaExtractor
from refam.extractors.sd3 import SD3Extractor
from refam.extractors.wan import WanExtractor
from refam.extractors.zimage import ZImageExtractor

BACKBONES = Path(__file__).parents[2] / "configs" / "backbones"

# each config: (extractor class, hub id, settings it must give)
EXPECTED = {
    "chroma": (ChromaExtractor, "lodestones/Chroma1-HD", dict(resolution=1024, caption_max_tokens=512)),
    "cogvideox": (CogVideoXExtractor, "THUDM/CogVideoX-5b",
                  dict(height=480, width=720, clip_frames=49, windows="first", caption_max_tokens=226)),
    "cogview4": (CogView4Extractor, "THUDM/CogView4-6B", dict(resolution=1024, keep_aspect=False, caption_max_tokens=1024)),
    "flux2": (Flux2Extractor, "black-forest-labs/FLUX.2-dev",
              dict(resolution=1024, caption_max_tokens=512, guidance_scale=4.0, text_layers=None)),
    "hidream": (HiDreamExtractor, "HiDream-ai/HiDream-I1-Full",
                dict(resolution=1024, keep_aspect=False, caption_max_tokens=128, expression_max_tokens=128)),
    "hunyuanimage": (HunyuanImageExtractor, "hunyuanvideo-community/HunyuanImage-2.1-Diffusers",
                     dict(resolution=2048, keep_aspect=False, caption_max_tokens=1000)),
    "hunyuanvideo": (HunyuanVideoExtractor, "hunyuanvideo-community/HunyuanVideo",
                     dict(height=720, width=1280, clip_frames=21, caption_max_tokens=256, guidance_scale=6.0)),
    "hunyuanvideo15": (HunyuanVideo15Extractor, "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v",
                       dict(height=480, width=848, clip_frames=21, caption_max_tokens=1000)),
    "kandinsky6": (Kandinsky6Extractor, "checkpoints/kandinsky6",
                   dict(height=512, width=768, clip_frames=21, caption_max_tokens=1024)),
    "ltx2": (LTX2Extractor, "Lightricks/LTX-2",
             dict(height=512, width=768, clip_frames=25, frame_rate=24.0, caption_max_tokens=1024, expression_max_tokens=128)),
    "pixart": (PixArtSigmaExtractor, "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
               dict(resolution=1024, keep_aspect=False, caption_max_tokens=300)),
    "lumina2": (Lumina2Extractor, "Alpha-VLLM/Lumina-Image-2.0",
                dict(resolution=1024, keep_aspect=False, caption_max_tokens=256, expression_max_tokens=128)),
    "qwenimage": (QwenImageExtractor, "Qwen/Qwen-Image",
                  dict(resolution=1024, keep_aspect=False, caption_max_tokens=512, expression_max_tokens=128)),
    "qwenimage21": (QwenImage21Extractor, "Qwen/Qwen-Image-2.1",
                    dict(resolution=1024, keep_aspect=False, caption_max_tokens=512, expression_max_tokens=128)),
    "sana": (SanaExtractor, "Efficient-Large-Model/Sana_1600M_1024px_diffusers",
             dict(resolution=1024, keep_aspect=False, caption_max_tokens=300, instruction=True)),
    "sd3": (SD3Extractor, "stabilityai/stable-diffusion-3.5-large", dict(resolution=1024, caption_max_tokens=256, blocks=None)),
    "wan": (WanExtractor, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dict(caption_max_tokens=512, height=480, width=832, clip_frames=21)),
    "zimage": (ZImageExtractor, "Tongyi-MAI/Z-Image-Turbo",
               dict(resolution=1024, keep_aspect=False, caption_max_tokens=512, expression_max_tokens=128)),
}


@pytest.mark.parametrize("name", sorted(path.stem for path in BACKBONES.glob("*.yaml")))
def test_the_backbone_config_builds_the_real_checkpoints_extractor(name):
    extractor_class, hub_id, settings = EXPECTED[name]
    section = yaml.safe_load((BACKBONES / f"{name}.yaml").read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(Extractor, "extractor")
    extractor = parser.instantiate(parser.parse_object({"extractor": section["extractor"]})).extractor
    assert type(extractor) is extractor_class and extractor.pretrained == hub_id
    assert (extractor.trajectory.sigma, extractor.trajectory.shift) == (0.75, False)
    assert {field: getattr(extractor, field) for field in settings} == settings


def test_every_backbone_config_is_checked():
    assert sorted(EXPECTED) == sorted(path.stem for path in BACKBONES.glob("*.yaml"))
