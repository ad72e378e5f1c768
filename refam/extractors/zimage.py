"""Z-Image (diffusers `ZImagePipeline`) on the template: a single-stream DiT, Qwen3 expressions through its
context refiner.

Sigma convention: the pipeline tells the transformer (1000 - t) / 1000 = 1 - sigma (the model embeds
1000 (1 - sigma)) and negates its output before the scheduler's step: the model predicts x0 - eps
(`velocity_sign = -1`). `shift: true` applies the scheduler's shift (static on Z-Image-Turbo; FLUX's
dynamic `calculate_shift` of the image tokens where the scheduler config asks for it).

Text: the pipeline wraps the prompt in Qwen3's chat template (a user turn, the assistant's turn opened,
thinking on), keeps every real token and reads the second-to-last hidden layer. Inside the transformer
the caption is padded to a multiple of 32 rows (`cap_pad_token`), embedded (`cap_embedder`), mixed among
itself by the `context_refiner` blocks, and joined after the image (itself padded to a multiple of 32
with `x_pad_token`): one stream [image | image padding | caption | caption padding] through the main
`layers`. The branch runs each expression alone through the same text side, as a caption of its tokens
(`text_side`), and rides after the caption: [image | ... | branch]. Expression token j gets caption token
j's position (1 + j, 0, 0); the image sits at (padded caption length + 1, row, col), as without the
branch. The branch sees neither padding: both count as caption.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF, ZSingleStreamAttnProcessor

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, dispatched, install, joint_branch, split_heads
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor
from refam.extractors.text_side import each_alone, rows_joined
from refam.text.decoder import DecoderReader, PromptTemplate


def _padded(length: int) -> int:
    """The rows a stream of `length` tokens takes in the transformer: padded to a multiple of SEQ_MULTI_OF."""
    return length + (-length) % SEQ_MULTI_OF


def _rotated(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The stock processor's RoPE: (x pairs as complex) x freqs, in float32."""
    with torch.amp.autocast("cuda", enabled=False):
        rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs.unsqueeze(2)
        return torch.view_as_real(rotated).flatten(3).type_as(x)


class ZImageBranchProcessor(BranchProcessor):
    """`ZSingleStreamAttnProcessor` of a main block, the branch's rows last in the stream."""

    stock_class = ZSingleStreamAttnProcessor

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis):
        query, key, value = (split_heads(attn, projection(hidden_states), norm)
                             for projection, norm in ((attn.to_q, attn.norm_q), (attn.to_k, attn.norm_k), (attn.to_v, None)))
        query, key = _rotated(query, freqs_cis), _rotated(key, freqs_cis)
        out = joint_branch(capture, self.block_index, query, key, value, ("image", "caption", "branch"), dispatched(self))
        out = attn.to_out[0](out.flatten(2, 3).to(query.dtype))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out


class ZImageExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from Z-Image's single-stream DiT (30 main blocks).

    `ImageDiTExtractor`'s settings; caption_max_tokens is the tokenizer's limit on the templated caption (the
    pipeline's 512), whose real tokens alone are kept.
    """

    pipeline = "ZImagePipeline"
    branch_first = False
    velocity_sign = -1
    checkpoint_layout = (
        "the folder of a Z-Image checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as Tongyi-MAI/Z-Image-Turbo"
    )

    def check_pipeline(self, pipe) -> None:
        if pipe.transformer.config.get("siglip_feat_dim") is not None:
            raise CheckpointError("the transformer has SigLIP inputs (Z-Image Omni); this extractor observes the "
                                  "text-to-image transformer", field="pretrained")

    def install_branch(self, pipe) -> list[ZImageBranchProcessor]:
        return install(list(pipe.transformer.layers), ZImageBranchProcessor, attribute="attention")

    def expression_reader(self) -> DecoderReader:
        text = self.pipe.tokenizer.apply_chat_template([{"role": "user", "content": "{}"}], tokenize=False,
                                                       add_generation_prompt=True, enable_thinking=True)
        return DecoderReader(self.pipe.tokenizer, self.pipe.text_encoder, PromptTemplate(text, hidden_layers=(-2,)),
                             self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> torch.Tensor:
        """The caption's rows [1, Lc, D] as the pipeline makes them (its real tokens only)."""
        embeds, _ = self.prompt(caption, do_classifier_free_guidance=False, max_sequence_length=self.caption_max_tokens)
        return embeds[0][None].to(self.device, self.dtype)

    def new_capture(self, expressions, condition, grid, blocks=None):
        # between the image and the branch: the image's padding and the padded caption, all hidden from the branch
        image = math.prod(grid)
        between = _padded(image) - image + _padded(condition.shape[1])
        return super().new_capture(expressions, condition.new_empty(1, between, 0), grid, blocks)

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """As ZImageImg2ImgPipeline: the VAE's mode, (z - shift_factor) * scaling_factor; 2 x 2 cells a token."""
        return patched_latent(vae_latent(self.pipe, self.pixels(image)), self.dtype, 2)

    def timestep(self, sigma: float) -> float:
        return 1.0 - sigma  # the pipeline's (1000 - t) / 1000

    def timestep_tensor(self, sigma: float, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (1,)) -> torch.Tensor:
        # the pipeline's own float32 arithmetic on the scheduler's t = 1000 sigma (an ulp from 1 - sigma)
        return ((1000 - torch.full(shape, 1000.0 * sigma, device=self.device)) / 1000).to(dtype)

    def caption_rotary(self, length: int) -> torch.Tensor:
        """[length, ...]: the rotary rows of caption tokens 0..length-1, at positions (1 + j, 0, 0)."""
        ids = torch.zeros(length, 3, dtype=torch.int32, device=self.device)
        ids[:, 0] = torch.arange(1, length + 1, dtype=torch.int32, device=self.device)
        return self.pipe.transformer.rope_embedder(ids)

    def text_side(self, expressions, sigma):
        transformer = self.pipe.transformer

        def as_caption(rows):  # ZImageTransformer2DModel.forward's caption path, for one caption of n rows
            n = rows.shape[1]
            feats, ids, pad, _, _ = transformer._pad_with_ids(rows[0], (_padded(n), 1, 1), (1, 0, 0), rows.device)
            feats, freqs, mask, _, _ = transformer._prepare_sequence(
                [transformer.cap_embedder(feats)], [ids], [pad], transformer.cap_pad_token, None, rows.device)
            for layer in transformer.context_refiner:
                feats = layer(feats, mask, freqs)
            return feats[:, :n]

        return each_alone(expressions, as_caption)

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, expressions):
        transformer = self.pipe.transformer

        def call():  # ZImagePipeline.__call__: one [C, 1, h, w] latent, the caption's rows, one timestep
            out = transformer([x_t[0].unsqueeze(1)], self.timestep_tensor(sigma), [condition[0]], return_dict=False)[0]
            return torch.stack(out).squeeze(2)

        if expressions is None:
            return call()
        k, length = expressions.valid.shape
        rotary = self.caption_rotary(length).repeat(k, 1)[None]
        with rows_joined(transformer.layers, expressions, "x", alongside={"freqs_cis": rotary},
                         exit_module=transformer.all_final_layer["2-1"]):
            return call()
