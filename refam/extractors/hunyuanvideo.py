"""HunyuanVideo 1.0 text-to-video (diffusers `HunyuanVideoPipeline`) on the template: HunyuanImage's blocks on
video, Llama 3 expressions through the token refiner.

Sigma convention: the transformer is told the scheduler's timestep, 1000 sigma, in float32 (the latents'
dtype, as the pipeline passes it), and predicts eps - x0; the scheduler's shift is static (7). The model is
guidance-distilled: the pipeline passes 1000 times its `guidance_scale` in the transformer's dtype.

The caption is read by LLaVA-Llama-3's language model in the pipeline's template (its first 95 tokens, the
system turn, cropped; hidden layer -3; padded on the right to `caption_max_tokens` and masked) and by CLIP,
whose pooled vector conditions every block. As in HunyuanImage (whose processors these blocks run, with
`HunyuanVideoAttnProcessor2_0`), the token refiner mixes the Llama rows before 20 dual-stream and 40
single-stream blocks over [video | caption] under a key mask; each expression goes through the refiner alone
(`text_side`) and joins after the caption where the blocks begin: [video | caption | expressions]. RoPE turns
video tokens only. Expressions are read by Llama alone (CLIP's pooled vector is the caption's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from refam.errors import CheckpointError
from refam.extractors.branch import install
from refam.extractors.hunyuanimage import HunyuanBranchProcessor, keys_joined, token_refined
from refam.extractors.latents import Latent, vae_latent
from refam.extractors.text_side import each_alone
from refam.extractors.video_template import VideoDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


class HunyuanVideoBranchProcessor(HunyuanBranchProcessor):
    """`HunyuanVideoAttnProcessor2_0`, which computes what `HunyuanImageAttnProcessor` computes."""

    stock_class = HunyuanVideoAttnProcessor2_0


@dataclass
class HunyuanVideoCaption:
    embeds: torch.Tensor  # [1, Lc, D] Llama rows after the template's crop, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc] in the transformer's dtype, as the pipeline casts it
    pooled: torch.Tensor  # [1, D2] CLIP's pooled output


class HunyuanVideoExtractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from HunyuanVideo 1.0's transformer (20 dual-stream and 40
    single-stream blocks), per latent frame.

    Args (besides `VideoDiTExtractor`'s; native 720 x 1280, 129 frames, clips of 4k + 1):
        caption_max_tokens: Llama length of the denoising prompt after the template's crop (the pipeline's 256;
            the padding is masked).
        guidance_scale: the embedded guidance (the pipeline's 6.0), told as 1000 times it.
    """

    pipeline = "HunyuanVideoPipeline"
    branch_first = False
    checkpoint_layout = (
        "the folder of a HunyuanVideo text-to-video checkpoint in the diffusers layout (model_index.json, transformer/, "
        "vae/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, scheduler/) or a hub id such as "
        "hunyuanvideo-community/HunyuanVideo")
    temporal_compression = 4  # AutoencoderKLHunyuanVideo; 8x in space with 2 x 2 patches: spatial_multiple 16

    def __init__(self, pretrained: str, height: int = 720, width: int = 1280, clip_frames: int = 21,
                 caption_max_tokens: int = 256, guidance_scale: float = 6.0, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)
        self.guidance_scale = guidance_scale

    def check_pipeline(self, pipe) -> None:
        config = pipe.transformer.config
        if config.image_condition_type is not None or (config.patch_size_t, config.patch_size) != (1, 2):
            raise CheckpointError("its transformer is an image-to-video one or patches other than 1 x 2 x 2 latent cells; "
                                  "this extractor observes the text-to-video model", field="pretrained")

    def install_branch(self, pipe) -> list[HunyuanVideoBranchProcessor]:
        model = pipe.transformer
        return install([*model.transformer_blocks, *model.single_transformer_blocks], HunyuanVideoBranchProcessor)

    def expression_reader(self) -> DecoderReader:
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        template = PromptTemplate(DEFAULT_PROMPT_TEMPLATE["template"], drop=DEFAULT_PROMPT_TEMPLATE["crop_start"],
                                  hidden_layers=(-3,))  # _get_llama_prompt_embeds: num_hidden_layers_to_skip 2
        return DecoderReader(self.pipe.tokenizer, self.pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> HunyuanVideoCaption:
        embeds, pooled, mask = self.prompt(prompt=caption, max_sequence_length=self.caption_max_tokens)
        return HunyuanVideoCaption(*(t.to(self.device, self.dtype) for t in (embeds, mask, pooled)))

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """As HunyuanVideoImageToVideoPipeline encodes its image: the VAE's mode times scaling_factor,
        [1, C, F, H, W], 1 x 2 x 2 latent cells a token."""
        latent = vae_latent(self.pipe, self.clip_pixels(frames), shifted=False)
        frames, rows, cols = latent.shape[2:]
        return Latent(latent.to(self.dtype), (frames, rows // 2, cols // 2))

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def text_side(self, expressions, sigma):
        return each_alone(expressions, token_refined(self.pipe.transformer, self.timestep_tensor(sigma)))

    def denoise(self, x_t, sigma, grid, condition: HunyuanVideoCaption, expressions):
        def call():  # HunyuanVideoPipeline.__call__: the scheduler's float32 timestep, 1000 guidance_scale
            guidance = torch.tensor([self.guidance_scale], dtype=self.dtype, device=self.device) * 1000.0
            return self.pipe.transformer(
                hidden_states=x_t, timestep=self.timestep_tensor(sigma), encoder_hidden_states=condition.embeds,
                encoder_attention_mask=condition.mask, pooled_projections=condition.pooled, guidance=guidance,
                return_dict=False)[0]

        if expressions is None:
            return call()
        with keys_joined(self.pipe.transformer, expressions, expressions.valid.numel()):
            return call()
