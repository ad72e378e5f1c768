"""Kandinsky 6 text-to-video (diffusers `Kandinsky6TI2VAPipeline`, video alone: `sample_audio=False`) on the
template: cross-attention to text refined by the transformer's own text blocks, Qwen2.5-VL expressions.

Sigma convention: the transformer is told the scheduler's timestep, 1000 sigma (float32), and predicts
eps - x0; the scheduler's shift is static. Distilled checkpoints (PiFlow: a widened output of several
predictions) are refused.

Text: Qwen2.5-VL reads the prompt in the pipeline's template (its first 129 tokens, the system turn, cropped;
the last hidden layer; padded to `caption_max_tokens` and masked), CLIP gives the pooled vector. Inside the
transformer the video branch embeds the caption (`video_text_embeddings`) and mixes it among its own tokens
(`video_text_transformer_blocks`: self-attention with RoPE at positions 0..L-1, under the mask, conditioned on
the timestep and the caption's pooled vector); every fused block hands that text afresh to its video
cross-attention (`video_dec_block.cross_attention`, no RoPE). `denoise` runs each expression through the
same text blocks alone, as an unpadded caption of its tokens beside the caption's pooled vector, and hands
the rows to every block after the caption's (`rows_joined` with no stream: [caption | expressions]); each
cross-attention processor scores the video queries against their keys from the same `to_key` and
`key_norm`, out of the output's softmax (`cross_branch`). The audio branch's text is the caption's alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_kandinsky6 import Kandinsky6AttnProcessor

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, cross_branch, dispatched, install
from refam.extractors.latents import Latent, vae_latent
from refam.extractors.text_side import each_alone, rows_joined
from refam.extractors.video_template import VideoDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


class Kandinsky6BranchProcessor(BranchProcessor):
    """`Kandinsky6AttnProcessor` of a fused block's video cross-attention with the expressions' keys after the
    caption's; the caption's part of the mask goes to the stock call."""

    stock_class = Kandinsky6AttnProcessor
    refused_arguments = ()

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, rotary_emb, rotary_emb_kv, attn_mask):
        caption_len = encoder_hidden_states.shape[1] - capture.layout.branch_len
        text, expressions = encoder_hidden_states.split_with_sizes((caption_len, capture.layout.branch_len), dim=1)
        query = attn.query_norm(attn.to_query(hidden_states).unflatten(-1, (attn.num_heads, -1)))
        key, branch_key = (attn.key_norm(attn.to_key(t).unflatten(-1, (attn.num_heads, -1))) for t in (text, expressions))
        value = attn.to_value(text).unflatten(-1, (attn.num_heads, -1))
        mask = None if attn_mask is None else attn_mask[:, :caption_len]
        out = cross_branch(capture, self.block_index, query, key, value, branch_key, dispatched(self, mask))
        return attn.out_layer(out.flatten(-2, -1))


@dataclass
class Kandinsky6Caption:
    embeds: torch.Tensor  # [1, Lc, D] Qwen rows after the template's crop, padded to caption_max_tokens
    pooled: torch.Tensor  # [1, D2] CLIP's pooled output
    mask: torch.Tensor | None  # [1, Lc] bool; None where the caption fills caption_max_tokens


class Kandinsky6Extractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from Kandinsky 6's video blocks, per latent frame.

    Args (besides `VideoDiTExtractor`'s; clips of 4k + 1 frames):
        caption_max_tokens: Qwen length of the denoising prompt after the template's crop (the pipeline's 1024;
            the padding is masked).
    """

    pipeline = "Kandinsky6TI2VAPipeline"
    attention_kind = "cross"
    branch_first = False
    checkpoint_layout = (
        "the folder of a Kandinsky 6 text-and-image-to-video-and-audio checkpoint in the diffusers layout "
        "(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, scheduler/), "
        "not distilled")
    temporal_compression = 4  # AutoencoderKLHunyuanVideo; 8x in space with 1 x 2 x 2 patches: spatial_multiple 16

    def __init__(self, pretrained: str, height: int = 512, width: int = 768, clip_frames: int = 21,
                 caption_max_tokens: int = 1024, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)

    def check_pipeline(self, pipe) -> None:
        if type(pipe.scheduler).__name__ != "FlowMatchEulerDiscreteScheduler" or tuple(pipe.transformer.patch_size) != (1, 2, 2):
            raise CheckpointError("is a distilled (PiFlow) checkpoint or patches other than 1 x 2 x 2 latent cells; this "
                                  "extractor observes the flow-matching Kandinsky 6 video model", field="pretrained")

    def install_branch(self, pipe) -> list[Kandinsky6BranchProcessor]:
        blocks = [block.video_dec_block for block in pipe.transformer.visual_transformer_blocks]
        return install(blocks, Kandinsky6BranchProcessor, attribute="cross_attention")

    def expression_reader(self) -> DecoderReader:
        from diffusers.pipelines.kandinsky6.pipeline_kandinsky6_ti2va import _PROMPT_TEMPLATE, _QWEN_CROP_START

        template = PromptTemplate(_PROMPT_TEMPLATE, drop=_QWEN_CROP_START)  # the last hidden layer
        return DecoderReader(self.pipe.tokenizer.tokenizer, self.pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> Kandinsky6Caption:
        embeds, pooled, mask, *_ = self.prompt(caption, do_classifier_free_guidance=False,
                                               max_sequence_length=self.caption_max_tokens)
        return Kandinsky6Caption(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype),
                                 None if mask is None else mask.to(self.device))

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """As the pipeline's `encode_image` (the VAE's mode here) times scaling_factor, in the transformer's
        [1, F, H, W, C] layout; 1 x 2 x 2 latent cells a token."""
        latent = vae_latent(self.pipe, self.clip_pixels(frames), shifted=False).permute(0, 2, 3, 4, 1)
        frames, rows, cols = latent.shape[1:4]
        return Latent(latent.to(self.dtype), (frames, rows // 2, cols // 2))

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def refined(self, expressions, timestep: torch.Tensor, pooled: torch.Tensor):
        """Each expression through the transformer's video text branch alone, as an unpadded caption of its tokens."""
        model = self.pipe.transformer
        temb = model.video_time_embeddings(timestep) + model.video_pooled_text_embeddings(pooled)

        def as_caption(rows):
            feats, rope = model.video_text_embeddings(rows), model.video_text_rope_embeddings(
                torch.arange(rows.shape[1], device=rows.device))
            for block in model.video_text_transformer_blocks:
                feats = block(feats, temb, rope, None)
            return feats

        return each_alone(expressions, as_caption)

    def denoise(self, x_t, sigma, grid, condition: Kandinsky6Caption, expressions):
        model, timestep = self.pipe.transformer, self.timestep_tensor(sigma)
        # text-to-video's input: [latent | zero condition latent | zero condition mask] on channels, no audio
        x = torch.cat([x_t, torch.zeros_like(x_t), x_t.new_zeros(*x_t.shape[:-1], 1)], dim=-1)

        def call():
            return model(hidden_states=x, encoder_hidden_states=condition.embeds, pooled_projections=condition.pooled,
                         timestep=timestep, encoder_attention_mask=condition.mask, return_dict=False)[0]

        if expressions is None:
            return call()
        rows = self.refined(expressions, timestep, condition.pooled).embeds.flatten(0, 1)[None]
        real = torch.ones(rows.shape[:2], dtype=torch.bool)
        with rows_joined(model.visual_transformer_blocks, expressions, None, alongside={"text_v": rows, "attn_mask": real}):
            return call()
