"""SANA (diffusers `SanaPipeline`: SANA 1.0, SANA 1.5) on the template: cross-attention to Gemma 2, a linear-attention DiT.

Sigma convention: a flow model (`flow_prediction`: the transformer predicts eps - x0) under DPM-Solver's
flow sigmas with a static `flow_shift`; the transformer is told the scheduler's timestep, 1000 sigma (the
scheduler truncates it to an integer, refam does not), times the config's `timestep_scale`.

Text: the pipeline lowercases the prompt, puts its complex human instruction (CHI) before it, reads Gemma 2's
last hidden layer under a padding mask, and keeps the first row (BOS) and the rows from the prompt's first
token on (`select_index`), padded to `caption_max_tokens` and masked. Expressions are read alike: lowercased,
after the same instruction, BOS and their own rows kept (the BOS a template token). Image tokens attend to
themselves by linear attention (`attn1`, no text) and to the caption in each block's `attn2`
(`SanaAttnProcessor2_0`: QK norm over all heads at once in SANA 1.5, the caption's padding masked by a bias);
the branch rides after the caption, [caption | expressions], through the per-token `caption_projection` and
`caption_norm`, and each `attn2` processor scores image queries against their keys from the same `to_k` and
norm (`cross_branch`), out of the output's softmax (PixArt's processor, `LegacyCrossBranchProcessor`).
"""

from __future__ import annotations

import inspect

import torch
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0

from refam.errors import CheckpointError
from refam.extractors.branch import install
from refam.extractors.latents import Latent, patched_latent
from refam.extractors.pixart import LegacyCrossBranchProcessor, MaskedCaption
from refam.extractors.template import ImageDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


class SanaBranchProcessor(LegacyCrossBranchProcessor):
    """`SanaAttnProcessor2_0` of a block's `attn2`: PixArt's computation, the QK norm over all heads at once."""

    stock_class = SanaAttnProcessor2_0
    qk_norm_across_heads = True


class SanaExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from SANA's transformer (20 blocks in 1600M).

    Args (besides `ImageDiTExtractor`'s; native 1024 x 1024, 32 px a token):
        caption_max_tokens: the caption's rows kept after the instruction, BOS included (the pipeline's 300;
            padding masked).
        instruction: whether prompts are read after the pipeline's complex human instruction, as
            `SanaPipeline.__call__` reads them by default.
    """

    pipeline = "SanaPipeline"
    attention_kind = "cross"
    branch_first = False
    patch_size = 1
    checkpoint_layout = (
        "the folder of a SANA checkpoint in the diffusers layout (model_index.json, transformer/, vae/, text_encoder/, "
        "tokenizer/, scheduler/) or a hub id such as Efficient-Large-Model/Sana_1600M_1024px_diffusers")

    def __init__(self, pretrained: str, caption_max_tokens: int = 300, instruction: bool = True, **settings) -> None:
        super().__init__(pretrained, caption_max_tokens=caption_max_tokens, **settings)
        self.instruction = instruction

    def check_pipeline(self, pipe) -> None:
        if pipe.transformer.config.guidance_embeds or pipe.transformer.config.patch_size != 1:
            raise CheckpointError("is a SANA-Sprint (guidance-embedded) or patching checkpoint; this extractor observes "
                                  "SANA 1.0 / 1.5 text-to-image", field="pretrained")

    def install_branch(self, pipe) -> list[SanaBranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), SanaBranchProcessor, attribute="attn2")

    def instruction_lines(self) -> list[str]:
        """The complex human instruction the pipeline's __call__ reads prompts after (none without `instruction`)."""
        default = inspect.signature(type(self.pipe).__call__).parameters["complex_human_instruction"].default
        return list(default) if self.instruction else []

    def expression_reader(self) -> DecoderReader:
        # SanaPipeline.encode_prompt: rows [0] + the last max_length - 1 of a prompt padded to (the instruction's
        # tokens + max_length - 2), i.e. BOS, then from the instruction's token count - 1 on (its trailing space
        # merges into the prompt's first token)
        chi = "\n".join(self.instruction_lines())
        drop = len(self.pipe.tokenizer.encode(chi)) - 1 if chi else 1
        template = PromptTemplate(chi + "{}", drop=drop, keep_first=True, lowercase=True)
        return DecoderReader(self.pipe.tokenizer, self.pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> MaskedCaption:
        embeds, mask, _, _ = self.prompt(caption, do_classifier_free_guidance=False, max_sequence_length=self.caption_max_tokens,
                                         complex_human_instruction=self.instruction_lines())
        return MaskedCaption(embeds.to(self.device, self.dtype), mask.to(self.device))

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """As SanaControlNetPipeline encodes its control image (its contiguous pixels): the DC-AE's latent times
        scaling_factor; one token a latent cell."""
        latent = self.pipe.vae.encode(self.pixels(image, contiguous=True)).latent * self.pipe.vae.config.scaling_factor
        return patched_latent(latent, self.dtype, 1)

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma * self.pipe.transformer.config.timestep_scale

    def denoise(self, x_t, sigma, grid, condition: MaskedCaption, expressions):
        mask = condition.mask if expressions is None else condition.with_branch(expressions.valid.numel())
        return self.pipe.transformer(
            x_t, encoder_hidden_states=self.join_text(condition.embeds, expressions), encoder_attention_mask=mask,
            timestep=self.timestep_tensor(sigma), return_dict=False)[0]
