"""HunyuanVideo 1.5 text-to-video (diffusers `HunyuanVideo15Pipeline`) on the template: joint attention,
Qwen2.5-VL expressions through the token refiner, video.

Sigma convention: the transformer is told the scheduler's timestep, 1000 sigma, cast to the model's
dtype as the pipeline casts it, and predicts eps - x0; the scheduler's shift is static (480p: 5,
720p: 9).

The caption is read three ways: Qwen2.5-VL in a chat template whose system message describes a
video (its first 108 tokens cropped, hidden layer -3, padded to `caption_max_tokens` and masked),
ByT5 on quoted glyph text, and SigLIP image tokens (zeros and masked out in text-to-video). The
transformer's `context_embedder`, the token refiner, mixes the Qwen tokens (self-attention under the
mask, a masked mean as its pooled vector) before the blocks, which see [video | caption stream], the
caption stream's real tokens first and its padding masked. The branch cannot ride through the
refiner without changing the caption, so `text_side` runs each expression through it alone as a
caption of its own (its own mean, the call's timestep) and adds the Qwen condition-type embedding,
its padding zeroed as the stock reordering zeroes a caption's; `denoise` joins the rows after the
caption stream where the blocks begin (`rows_joined`): [video | caption stream | expressions]. Every block is
dual-stream; RoPE turns video tokens only, text tokens have no positions. Expressions are read by
Qwen alone (no glyph reading).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, dispatched, install, joint_branch, video_text_qkv
from refam.extractors.latents import Latent
from refam.extractors.text_side import each_alone, rows_joined
from refam.extractors.video_template import VideoDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


def pair_mask(text_mask: torch.Tensor, num_video: int) -> torch.Tensor:
    """The stock processor's mask over [video | text] [B, 1, S, S]: a pair is kept where both tokens are
    real (video tokens always are), so a padding row sees nothing and is seen by none."""
    mask = F.pad(text_mask, (num_video, 0), value=True).bool()
    return mask[:, None, None, :] & mask[:, None, :, None]


class HunyuanVideo15BranchProcessor(BranchProcessor):
    """`HunyuanVideo15AttnProcessor2_0` with the branch after the caption stream: [video | caption | expressions]."""

    stock_class = HunyuanVideo15AttnProcessor2_0
    refused_arguments = ()  # the caption stream's mask goes to the main stream, as in the stock call

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        query, key, value = video_text_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        num_video = hidden_states.shape[1]
        main_attention = dispatched(self, pair_mask(attention_mask[:, : capture.layout.caption_len], num_video))
        out = joint_branch(capture, self.block_index, query, key, value, ("image", "caption", "branch"), main_attention)
        out = out.flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out[:, :num_video])), attn.to_add_out(out[:, num_video:])


@dataclass
class HunyuanVideo15Caption:
    embeds: torch.Tensor  # [1, Lc, D] Qwen rows after the crop, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc]
    glyph: torch.Tensor  # [1, 256, D2] ByT5 rows of the quoted text (zeros without any)
    glyph_mask: torch.Tensor  # [1, 256]
    image: torch.Tensor  # [1, 729, D3] zeros: text-to-video has no image tokens


class HunyuanVideo15Extractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from HunyuanVideo 1.5's transformer (54 dual-stream
    blocks), per latent frame.

    Args (besides `VideoDiTExtractor`'s; native 480 x 848 (480p) or 720 x 1280, 121 frames, clips of 4k + 1):
        caption_max_tokens: Qwen length of the denoising prompt after the template's crop (the
            pipeline's 1000; the padding is masked, so it changes the velocity only by rounding).
    """

    pipeline = "HunyuanVideo15Pipeline"
    branch_first = False
    checkpoint_layout = (
        "the folder of a HunyuanVideo 1.5 text-to-video checkpoint in the diffusers layout (model_index.json, "
        "transformer/, vae/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, scheduler/, guider/) or a hub "
        "id such as hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v")
    temporal_compression = 4  # AutoencoderKLHunyuanVideo15; 16x in space with patch size 1: spatial_multiple 16

    def __init__(self, pretrained: str, height: int = 480, width: int = 848, clip_frames: int = 21,
                 caption_max_tokens: int = 1000, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)

    def check_pipeline(self, pipe) -> None:
        config = pipe.transformer.config
        if (config.patch_size, config.patch_size_t) != (1, 1) or config.use_meanflow:
            raise CheckpointError("its transformer patches more than one latent cell per token or is step-distilled "
                                  "(meanflow); this extractor observes the 480p / 720p text-to-video ones", field="pretrained")
        if pipe.vae.temporal_compression_ratio != self.temporal_compression or pipe.vae.spatial_compression_ratio != 16:
            raise CheckpointError("its VAE does not compress 16x in space and 4x in time as HunyuanVideo 1.5's does",
                                  field="pretrained")

    def prepare(self, pipe) -> None:
        pipe.tokenizer_max_length = self.caption_max_tokens  # encode_prompt pads the Qwen prompt to it
        super().prepare(pipe)

    def install_branch(self, pipe) -> list[HunyuanVideo15BranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), HunyuanVideo15BranchProcessor)

    def expression_reader(self) -> DecoderReader:
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

        pipe = self.pipe
        text = pipe.tokenizer.apply_chat_template(format_text_input(["{}"], pipe.system_message),
                                                  add_generation_prompt=True, tokenize=False)[0]
        skip = inspect.signature(pipe._get_mllm_prompt_embeds).parameters["num_hidden_layers_to_skip"].default
        template = PromptTemplate(text, drop=pipe.prompt_template_encode_start_idx, hidden_layers=(-(skip + 1),),
                                  add_special_tokens=False)  # apply_chat_template's tokenization adds none
        return DecoderReader(pipe.tokenizer, pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> HunyuanVideo15Caption:
        embeds, mask, glyph, glyph_mask = self.prompt(prompt=caption, dtype=self.dtype)
        image = torch.zeros(1, self.pipe.vision_num_semantic_tokens, self.pipe.vision_states_dim, dtype=self.dtype)
        return HunyuanVideo15Caption(*(t.to(self.device) for t in (embeds, mask, glyph, glyph_mask, image)))

    def caption_len(self, condition: HunyuanVideo15Caption) -> int:
        return sum(t.shape[1] for t in (condition.image, condition.glyph, condition.embeds))  # the caption stream

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """As HunyuanVideo15ImageToVideoPipeline encodes its image: the VAE's mode times scaling_factor,
        [1, C, F, H, W], one token per latent cell."""
        vae = self.pipe.vae
        latent = vae.encode(self.clip_pixels(frames)).latent_dist.mode() * vae.config.scaling_factor
        return Latent(latent.to(self.dtype), tuple(latent.shape[2:]))

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def text_side(self, expressions, sigma):
        model, timestep = self.pipe.transformer, self.timestep_tensor(sigma).to(self.dtype)

        def as_caption(rows):  # the forward's Qwen path for one caption of n real rows: token refiner, type embedding
            real = torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)
            return model.context_embedder(rows, timestep, real) + model.cond_type_embed(torch.zeros_like(real, dtype=torch.long))

        return each_alone(expressions, as_caption)

    def denoise(self, x_t, sigma, grid, condition: HunyuanVideo15Caption, expressions):
        model = self.pipe.transformer
        timestep = self.timestep_tensor(sigma).to(self.dtype)  # the scheduler's float32 timestep, cast as the pipeline does
        # text-to-video's input: [latent | zero condition latent | zero condition mask]
        x = torch.cat([x_t, torch.zeros_like(x_t), x_t.new_zeros(1, 1, *x_t.shape[2:])], dim=1)

        def call():
            return model(hidden_states=x, timestep=timestep, encoder_hidden_states=condition.embeds,
                         encoder_attention_mask=condition.mask, encoder_hidden_states_2=condition.glyph,
                         encoder_attention_mask_2=condition.glyph_mask, image_embeds=condition.image,
                         return_dict=False)[0]

        if expressions is None:
            return call()
        real = torch.ones(1, expressions.valid.numel(), dtype=torch.bool)  # the stock mask's say over the rows
        with rows_joined(model.transformer_blocks, expressions, "encoder_hidden_states",
                         alongside={"attention_mask": real}):
            return call()
