"""`refam train-shapes`: train the refam-shapes model on CPU and save it as a diffusers FLUX folder.

Two Lightning stages on procedural scenes (train split only):
1. the AutoencoderKL on random crops (reconstruction + a small KL term), then its latent statistics
   set `shift_factor` / `scaling_factor` as in FLUX's VAE config;
2. the FluxTransformer2DModel with both text encoders on the frozen VAE's latents, with the
   rectified-flow loss (x_t = (1 - t) x0 + t eps, target eps - x0, t logit-normal), captions
   randomised per step and encoded by `FluxPipeline.encode_prompt` exactly as at inference;
   with `--ground-weight` > 0, plus the auxiliary grounding term of `refam.shapes.grounding`.

Scenes come from one of two families (`--family`): "varied" (any background, size and aspect
ratio, `refam.shapes.varied`; v2's) or "fixed" (the demo set's, `refam.shapes.scenes`). Either
way an image is resized to the square frame the extractor reads (`FRAME`), as at inference.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

from refam.errors import ConfigError
from refam.shapes.dataset import FAMILIES
from refam.shapes.grounding import BatchCapture, GroundingTerm, cell_coverage
from refam.shapes.model import ShapesModelConfig, build_components
from refam.shapes.scenes import Referral, Scene, ShapeObject, training_caption

FRAME = 128  # the extractor's `resolution` for refam-shapes: every image is resized to FRAME x FRAME
GRID = FRAME // 8  # token grid: VAE factor 4, then FLUX's 2 x 2 packing


def model_frame(image) -> torch.Tensor:
    """[3, FRAME, FRAME] in [-1, 1], resized exactly as `FluxExtractor.encode_image` resizes."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=8).preprocess(image.convert("RGB"), height=FRAME, width=FRAME)[0]


class SceneCrops(IterableDataset):
    """Endless random crops of training scenes for the autoencoder."""

    def __init__(self, crop: int, seed: int, family: str = "varied") -> None:
        self.crop, self.seed, self.family = crop, seed, family

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        index = 0
        while True:
            image = model_frame(FAMILIES[self.family]("train", 10_000_000 + index).image)
            index += 1
            y, x = rng.integers(0, image.shape[1] - self.crop + 1, size=2)
            yield image[:, y : y + self.crop, x : x + self.crop]


class AutoencoderStage(L.LightningModule):
    def __init__(self, vae, lr: float, kl_weight: float) -> None:
        super().__init__()
        self.vae, self.lr, self.kl_weight = vae, lr, kl_weight

    def training_step(self, batch, batch_idx):
        posterior = self.vae.encode(batch).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, batch)
        terms = self.latent_terms(batch, posterior)
        loss = mse + self.kl_weight * posterior.kl().mean() + sum(terms.values())
        self.log_dict({"vae/mse": mse, "vae/loss": loss, **{f"vae/{k}": v for k, v in terms.items()}}, prog_bar=True)
        return loss

    def latent_terms(self, batch: torch.Tensor, posterior) -> dict[str, torch.Tensor]:
        """Further weighted loss terms on the latents (a subclass's); none here."""
        return {}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class LatentScenes(Dataset):
    """Precomputed normalised latents of training scenes, with the scenes' objects (for captions
    and expressions, in the FRAME x FRAME frame) and each object's token-cell coverage [n, GRID^2]."""

    def __init__(self, latents: torch.Tensor, scenes: list, coverage: list[torch.Tensor]) -> None:
        self.latents, self.scenes, self.coverage = latents, scenes, coverage

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int):
        return index


class FlowStage(L.LightningModule):
    def __init__(self, pipe, data: LatentScenes, lr: float, caption_tokens: int, empty_caption_rate: float, seed: int,
                 t_mean: float = 0.0, pooled_prompt: str = "caption", omit_colour: float = 0.0,
                 ground_weight: float = 0.0, ground_share: float = 0.5, ground_sigma: tuple[float, float] = (0.6, 0.9),
                 absent_share: float = 0.0) -> None:
        super().__init__()
        self.pipe = pipe
        self.transformer, self.t5, self.clip = pipe.transformer, pipe.text_encoder_2, pipe.text_encoder
        self.data, self.lr, self.caption_tokens = data, lr, caption_tokens
        self.empty_caption_rate = empty_caption_rate
        self.t_mean, self.pooled_prompt, self.omit_colour = t_mean, pooled_prompt, omit_colour
        self.ground_weight, self.ground_share, self.ground_sigma = ground_weight, ground_share, ground_sigma
        self.rng = np.random.default_rng(seed)
        self.grounding = None
        if ground_weight > 0:
            from refam.extractors.flux import install_flux_branch

            self.processors = install_flux_branch(self.transformer)  # the extractor's own branch
            self.grounding = GroundingTerm(pipe.tokenizer_2, self.t5, absent_share=absent_share)

    def on_train_start(self) -> None:
        for module in (self.transformer, self.t5, self.clip):  # a resumed pipeline loads in eval mode
            module.train()

    def training_step(self, indices, batch_idx):
        indices = indices.tolist()
        x0 = self.data.latents[indices].float()
        captions = ["" if self.rng.random() < self.empty_caption_rate else training_caption(self.data.scenes[i], self.rng, self.omit_colour)
                    for i in indices]
        # with pooled_prompt "empty", CLIP's global vector carries nothing: the caption reaches the image
        # only through attention to the T5 tokens, which is what the expression branch reads
        clip_captions = captions if self.pooled_prompt == "caption" else [""] * len(captions)
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompt=clip_captions, prompt_2=captions, device=x0.device,
                                                           max_sequence_length=self.caption_tokens)
        batch, channels, height, width = x0.shape
        t = torch.sigmoid(torch.randn(batch) + self.t_mean)
        grounded = torch.zeros(batch)
        if self.grounding is not None:  # a share of the batch is observed where inference observes
            grounded = (torch.rand(batch) < self.ground_share).float()
            low, high = self.ground_sigma
            t = torch.where(grounded.bool(), torch.empty(batch).uniform_(low, high), t)
        noise = torch.randn_like(x0)
        x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        packed = self.pipe._pack_latents(x_t, batch, channels, height, width)
        target = self.pipe._pack_latents(noise - x0, batch, channels, height, width)
        img_ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, x0.device, x0.dtype)
        capture = None
        if self.grounding is not None:
            drawn = self.grounding.draw([self.data.scenes[i] for i in indices], self.rng)
            expr_embeds, valid, kept = self.grounding.encode(drawn, x0.device)
            # the branch goes first in the text sequence, as FluxExtractor.forward puts it
            embeds = torch.cat([expr_embeds.flatten(1, 2).to(embeds.dtype), embeds], dim=1)
            text_ids = torch.zeros(embeds.shape[1], 3, dtype=text_ids.dtype, device=text_ids.device)
            capture = BatchCapture(valid.cpu(), self.caption_tokens, packed.shape[1], len(self.processors))
            for processor in self.processors:
                processor.capture = capture
        try:
            prediction = self.transformer(hidden_states=packed, encoder_hidden_states=embeds, pooled_projections=pooled,
                                          timestep=t, img_ids=img_ids, txt_ids=text_ids, return_dict=False)[0]
        finally:
            for processor in getattr(self, "processors", []):
                processor.capture = None
        loss = F.mse_loss(prediction, target)
        self.log("flow/loss", loss, prog_bar=True)
        if capture is not None and grounded.any():  # a batch may, by chance, hold no grounded item
            coverage = torch.zeros(batch, valid.shape[1], packed.shape[1])
            for b, (i, row) in enumerate(zip(indices, drawn)):
                for k, (expression, _) in enumerate(row):
                    if expression.target is not None:  # an absent referent covers nothing
                        coverage[b, k] = self.data.coverage[i][expression.target]
            ground = self.grounding.loss(capture.logits(), valid, kept, coverage, grounded)
            self.log("ground/loss", ground, prog_bar=True)
            loss = loss + self.ground_weight * ground
        return loss

    def configure_optimizers(self):
        params = list(self.transformer.parameters()) + list(self.t5.parameters()) + list(self.clip.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 200))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


class SavePipelineEvery(L.Callback):
    """Writes the pipeline as a diffusers folder every `every` steps, to evaluate a run midway."""

    def __init__(self, pipe, folder: Path, every: int) -> None:
        self.pipe, self.folder, self.every = pipe, folder, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self.pipe.save_pretrained(self.folder / f"step-{trainer.global_step}", safe_serialization=True)


class GroundingMonitor(L.Callback):
    """Scores point accuracy (paper setting) on held-out expressions every `every` steps, so that a run
    can be judged by what it is for, grounding, rather than by its loss alone."""

    def __init__(self, pipe, folder: Path, every: int, manifest: Path, pooled_prompt: str) -> None:
        self.pipe, self.folder, self.every, self.manifest = pipe, folder, every, manifest
        self.pooled_prompt = pooled_prompt
        self.history: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every or step % self.every:
            return
        from refam.data.manifest import ManifestDataset
        from refam.shapes.evaluate import MAGNET_ROWS, build_pipeline, evaluate, expression_kinds

        self.pipe.save_pretrained(self.folder, safe_serialization=True)
        pipeline = build_pipeline(str(self.folder), MAGNET_ROWS["magnets + stop-word filter (paper)"],
                                  pooled_prompt=self.pooled_prompt)
        result = evaluate(pipeline, ManifestDataset(str(self.manifest)), expression_kinds(self.manifest))
        self.history.append([step, round(result["PA"], 2)])
        pl_module.log("shapes/PA", result["PA"])
        print(f"step {step}: PA {result['PA']:.1f} on {result['expressions']} held-out expressions", flush=True)


def _trainer(max_steps: int, log_dir: Path, name: str, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=L.pytorch.loggers.CSVLogger(log_dir, name=name),
                     enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=min(25, max(1, max_steps // 10)),
                     gradient_clip_val=1.0,
                     callbacks=callbacks or [])


def in_model_frame(scene: Scene) -> tuple[Scene, torch.Tensor]:
    """The scene as the model sees it (objects' centres in the FRAME x FRAME frame, masks and the
    image dropped: captions and expressions need the objects only) and each object's coverage of
    the token cells [n, GRID * GRID]."""
    width, height = scene.image.size
    sx, sy = FRAME / width, FRAME / height
    coverage = torch.stack([cell_coverage(o.mask, FRAME, GRID).flatten() for o in scene.objects]) \
        if scene.objects else torch.zeros(0, GRID * GRID)
    objects = [ShapeObject(o.shape, o.colour, o.size, o.cx * sx, o.cy * sy, None, o.full_area) for o in scene.objects]
    referrals = [Referral(r.text, r.target, r.kind) for r in scene.referrals]
    return Scene(image=None, objects=objects, referrals=referrals, size=FRAME), coverage


@torch.no_grad()
def encode_scenes(vae, count: int, batch: int = 64, family: str = "varied") -> tuple[torch.Tensor, list, list]:
    scenes, latents, coverage = [], [], []
    for start in range(0, count, batch):
        chunk = [FAMILIES[family]("train", i) for i in range(start, min(count, start + batch))]
        images = torch.stack([model_frame(scene.image) for scene in chunk])
        latents.append(vae.encode(images).latent_dist.mode().half())
        for scene in chunk:
            framed, cells = in_model_frame(scene)
            scenes.append(framed)
            coverage.append(cells.half())
    return torch.cat(latents), scenes, coverage


def loss_curve(metrics_csv: Path, key: str, points: int = 40) -> list[list[float]]:
    if not metrics_csv.exists():  # a run shorter than the logging interval
        return []
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(key)]
    values = [(int(r["step"]), float(r[key])) for r in rows]
    stride = max(1, len(values) // points)
    return [[s, round(v, 5)] for s, v in values[::stride]]


def train(output: Path, vae_steps: int, flow_steps: int, scenes: int, batch_size: int, seed: int,
          config: ShapesModelConfig, lr: float, caption_tokens: int, work_dir: Path, snapshot_every: int = 0,
          resume_from: Path | None = None, t_mean: float = 0.0, pooled_prompt: str = "caption",
          monitor_every: int = 0, monitor_manifest: Path | None = None, omit_colour: float = 0.0,
          family: str = "varied", ground_weight: float = 0.0, ground_share: float = 0.5,
          absent_share: float = 0.0) -> dict:
    from diffusers import FluxPipeline

    torch.manual_seed(seed)
    start = time.time()
    L.seed_everything(seed)
    previous = None
    if resume_from is not None:
        # continue the flow stage of a saved model: its VAE (and latent statistics) stay as they are
        pipe = FluxPipeline.from_pretrained(str(resume_from))  # (a Path is not a hub id: diffusers wants a str)
        parts = {name: getattr(pipe, name) for name in ("scheduler", "vae", "text_encoder", "tokenizer",
                                                         "text_encoder_2", "tokenizer_2", "transformer")}
        record_file = Path(resume_from) / "training.json"
        previous = json.loads(record_file.read_text()) if record_file.exists() else {"folder": str(resume_from)}
        vae = parts["vae"].eval().requires_grad_(False)
        vae_seconds, vae_log = 0.0, Path(work_dir) / "no-vae-stage.csv"
        latents, scene_list, coverage = encode_scenes(vae, scenes, family=family)
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
        latents = ((latents.float() - shift) * scale).half()
        std = 1.0 / scale
    else:
        try:
            parts = build_components(config, seed)
        except ValueError as err:  # a model shape that cannot be built (the RoPE split): the flags at fault
            raise ConfigError(f"--width / --heads / --rope-fixed-dims: {err}") from err
        vae = parts["vae"]
        crops = DataLoader(SceneCrops(crop=64, seed=seed, family=family), batch_size=16)
        vae_trainer = _trainer(vae_steps, work_dir, "vae")
        vae_trainer.fit(AutoencoderStage(vae, lr=1e-3, kl_weight=1e-6), crops)
        vae.eval().requires_grad_(False)
        vae_seconds = time.time() - start
        vae_log = Path(vae_trainer.logger.log_dir) / "metrics.csv"

        latents, scene_list, coverage = encode_scenes(vae, scenes, family=family)
        shift, std = latents.float().mean().item(), latents.float().std().item()
        vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
        latents = ((latents.float() - shift) / std).half()
        pipe = FluxPipeline(**parts)
    data = LatentScenes(latents, scene_list, coverage)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    stage = FlowStage(pipe, data, lr=lr, caption_tokens=caption_tokens, empty_caption_rate=0.1, seed=seed,
                      t_mean=t_mean, pooled_prompt=pooled_prompt, omit_colour=omit_colour,
                      ground_weight=ground_weight, ground_share=ground_share, absent_share=absent_share)
    monitor = GroundingMonitor(pipe, Path(work_dir) / "monitored", monitor_every if monitor_manifest else 0,
                               monitor_manifest, pooled_prompt)
    flow_trainer = _trainer(flow_steps, work_dir, "flow",
                            [SavePipelineEvery(pipe, work_dir / "snapshots", snapshot_every), monitor])
    flow_trainer.fit(stage, loader)
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        module.eval()
    pipe.save_pretrained(output, safe_serialization=True)

    record = {
        "command": "refam train-shapes " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "seed": seed,
        "model": config.to_dict(),
        "caption_tokens": caption_tokens,
        "t_logit_normal_mean": t_mean,
        "pooled_prompt": pooled_prompt,
        "omit_colour": omit_colour,
        "family": family,
        "ground_weight": ground_weight,
        "ground_share": ground_share,
        "absent_share": absent_share,
        "training_scenes": scenes,
        "batch_size": batch_size,
        "vae_steps": vae_steps,
        "flow_steps": flow_steps,
        "vae_seconds": round(vae_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "machine": "2 CPU cores (refam development machine)",
        "vae_latent_shift": shift,
        "vae_latent_scale": 1.0 / std,
        "vae_mse_curve": loss_curve(vae_log, "vae/mse"),
        "flow_loss_curve": loss_curve(Path(flow_trainer.logger.log_dir) / "metrics.csv", "flow/loss"),
        "ground_loss_curve": loss_curve(Path(flow_trainer.logger.log_dir) / "metrics.csv", "ground/loss"),
        "point_accuracy_curve": {"manifest": str(monitor_manifest), "steps_pa": monitor.history} if monitor.history else None,
    }
    if previous is not None:
        record["resumed_from"] = previous  # the earlier stage's full record, curves included
        record["total_seconds"] += previous.get("total_seconds", 0.0)
    (output / "training.json").write_text(json.dumps(record, indent=1))
    return record
