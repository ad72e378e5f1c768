"""The tiny Qwen-Image folder is a real QwenImagePipeline: it loads offline and runs stock."""

import pytest
import torch

from refam.testing.tiny_qwenimage import QWEN_IMAGE_SCHEDULER, save_tiny_qwenimage


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import QwenImagePipeline

    folder = save_tiny_qwenimage(tmp_path_factory.mktemp("tiny-qwenimage") / "qwenimage")
    return QwenImagePipeline.from_pretrained(folder, local_files_only=True)


def test_the_folder_loads_with_the_real_classes_and_scheduler(pipe):
    assert type(pipe.text_encoder).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(pipe.tokenizer).__name__ == "Qwen2Tokenizer" and pipe.tokenizer.eos_token == "<|im_end|>"
    assert {k: pipe.scheduler.config[k] for k in QWEN_IMAGE_SCHEDULER} == QWEN_IMAGE_SCHEDULER


def test_stock_encode_prompt_drops_exactly_the_system_prompt(pipe):
    embeds, mask = pipe.encode_prompt("the man on the left", device=torch.device("cpu"))
    # 5 words, then the template's kept suffix "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"
    assert embeds.shape == (1, 5 + 5, pipe.transformer.config.joint_attention_dim) and mask is None


@torch.no_grad()
def test_one_stock_transformer_forward_on_a_non_square_grid(pipe):
    embeds, _ = pipe.encode_prompt("a dog", device=torch.device("cpu"))
    x = torch.randn(1, 4 * 6, pipe.transformer.config.in_channels, generator=torch.Generator().manual_seed(0))

    def velocity(rows: int, cols: int) -> torch.Tensor:
        return pipe.transformer(hidden_states=x, encoder_hidden_states=embeds, timestep=torch.tensor([0.75]),
                                img_shapes=[[(1, rows, cols)]], return_dict=False)[0]

    out = velocity(4, 6)
    assert out.shape == (1, 24, 64) and torch.isfinite(out).all()
    assert not torch.allclose(out, velocity(6, 4))  # the RoPE sees the grid: 4 x 6 is not 6 x 4
