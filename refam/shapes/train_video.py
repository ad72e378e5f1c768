"""`refam train-shapes-video`: train refam-shapes-video on CPU and save it as a diffusers Mochi folder.

The refam-shapes v2 recipe on moving-shape clips (`refam.shapes.motion`, train split only):
1. the AutoencoderKLMochi on random crops of 7-frame windows (reconstruction + a small KL term);
   its per-channel latent statistics become `latents_mean` / `latents_std`, as in Mochi's config;
2. the MochiTransformer3DModel with its T5 on the frozen VAE's latents of each clip's first window
   (`CLIP_FRAMES` frames, a shorter clip padded by repeating its last frame, exactly as
   `MochiExtractor` reads a video), under Mochi's rectified-flow convention (x_s = (1 - s) x0 + s eps,
   timestep 1000 (1 - s), target x0 - eps), captions randomised per step and encoded by
   `MochiPipeline.encode_prompt` as at inference; plus the auxiliary grounding term of
   `refam.shapes.grounding` on a share of each batch: expressions of looks and of motion ride the
   extractor's own branch (`MochiBranchProcessor`: nothing attends to them, the flow loss is
   unchanged), and their maps over every latent frame are pulled onto the referent's cells of the
   frames that latent frame holds. The grounding is supervised, not emergent.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from refam.card import read_training_record
from refam.extractors.video import plan_clips
from refam.shapes.grounding import BatchCapture, GroundingTerm
from refam.shapes.motion import TWIN_RATE, MotionClip, make_motion_clip
from refam.shapes.train import SavePipelineEvery, _trainer, loss_curve
from refam.shapes.video_autoencoder import ClipCrops, ColourReadoutStage, MotionReadoutStage, frame_pixels, resized_mask
from refam.shapes.video_model import (CLIP_FRAMES, FRAME, TEMPORAL, VideoModelConfig, build_video_components,
                                      fixed_rope_mask)

GRID = (FRAME[0] // 16, FRAME[1] // 16)
MOTION_KINDS = {"motion": 3.0, "still": 3.0, "moving": 3.0, "object motion": 2.0}


def window(clip: MotionClip) -> tuple[list[int], list[int]]:
    """The frame indices of the first window as `MochiExtractor` encodes it (the last repeated to
    pad a short clip), and each one's latent frame."""
    plan = plan_clips(clip.num_frames, CLIP_FRAMES, "first", TEMPORAL)[0]
    indices = list(range(plan.start, plan.stop))
    indices += [indices[-1]] * (plan.length - len(indices))
    return indices, [plan.latent_of(i) for i in range(plan.length)]


def coverage(mask: np.ndarray) -> torch.Tensor:
    """[gh, gw] fraction of each token cell an object covers once its mask is resized to FRAME."""
    return F.adaptive_avg_pool2d(resized_mask(mask)[None, None], GRID)[0, 0]


def clip_targets(clip: MotionClip) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's pixels [3, F, H, W] and each object's coverage of every latent frame's token
    cells [n, F_lat gh gw] (the mean over the frames that latent frame holds)."""
    indices, latents = window(clip)
    frames = {i: clip.frame(i) for i in sorted(set(indices))}
    pixels = frame_pixels([frames[i].image for i in indices])
    num_latents = max(latents) + 1
    cover = torch.zeros(len(clip.objects), num_latents, *GRID)
    counts = torch.zeros(num_latents)
    for i, latent in zip(indices, latents):
        counts[latent] += 1
        for k, mask in enumerate(frames[i].masks):
            cover[k, latent] += coverage(mask)
    cover /= counts[None, :, None, None]
    return pixels, cover.flatten(1)


class LatentClips(Dataset):
    def __init__(self, latents: torch.Tensor, clips: list[MotionClip], cover: list[torch.Tensor]) -> None:
        self.latents, self.clips, self.cover = latents, clips, cover

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        return index


@torch.no_grad()
def encode_clips(vae, count: int, batch: int = 8, twin_rate: float = TWIN_RATE
                 ) -> tuple[torch.Tensor, list[MotionClip], list[torch.Tensor]]:
    clips, latents, cover = [], [], []
    for start in range(0, count, batch):
        chunk = [make_motion_clip("train", i, twin_rate=twin_rate) for i in range(start, min(count, start + batch))]
        targets = [clip_targets(clip) for clip in chunk]
        pixels = torch.stack([p for p, _ in targets])
        latents.append(vae.encode(pixels).latent_dist.mode().half())
        clips += chunk
        cover += [c.half() for _, c in targets]
    return torch.cat(latents), clips, cover


def training_caption(clip: MotionClip, rng: np.random.Generator) -> str:
    """A randomised description: objects in random order, each with or without its colour, shape
    word or motion."""
    parts = []
    for k in rng.permutation(len(clip.objects)):
        o = clip.objects[k]
        moving = {"still": "standing still", "diagonal": "moving"}.get(o.motion, f"moving {o.motion}")
        noun = o.shape if rng.random() < 0.8 else "object"
        words = ["a"] + ([o.colour] if rng.random() < 0.8 else []) + [noun] + ([moving] if rng.random() < 0.6 else [])
        parts.append(" ".join(words))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


WARMUP_STEPS = 200
LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, schedule: str, total_steps: int, floor: float = 0.1) -> float:
    """The learning rate's multiplier at `step`: a linear warm-up over WARMUP_STEPS, then constant,
    or ("cosine") a half cosine from 1 down to `floor` at `total_steps`: a resumed run that ends
    on a low rate settles where a constant one keeps jumping."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    if schedule == "constant" or step < WARMUP_STEPS:
        return warm
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
    return floor + (1.0 - floor) * 0.5 * (1.0 + float(np.cos(np.pi * progress)))


class VideoFlowStage(L.LightningModule):
    def __init__(self, pipe, data: LatentClips, lr: float, caption_tokens: int, empty_caption_rate: float, seed: int,
                 ground_weight: float, ground_share: float, ground_sigma: tuple[float, float] = (0.0, 0.2),
                 t_mean: float = 0.0, rope_mask: torch.Tensor | None = None, lr_schedule: str = "constant",
                 total_steps: int = 0) -> None:
        super().__init__()
        from refam.extractors.branch import install
        from refam.extractors.mochi import MochiBranchProcessor

        self.pipe, self.transformer, self.t5 = pipe, pipe.transformer, pipe.text_encoder
        self.data, self.lr, self.caption_tokens = data, lr, caption_tokens
        self.lr_schedule, self.total_steps = lr_schedule, total_steps
        self.empty_caption_rate, self.t_mean = empty_caption_rate, t_mean
        self.ground_weight, self.ground_share, self.ground_sigma = ground_weight, ground_share, ground_sigma
        self.rng = np.random.default_rng(seed)
        self.processors = install(list(self.transformer.transformer_blocks), MochiBranchProcessor, attribute="attn1")
        if rope_mask is not None:  # the unrotated RoPE dims (`rope_fixed_dims`) stay at zero frequency
            self.transformer.pos_frequencies.register_hook(lambda grad: grad * rope_mask)
        self.grounding = GroundingTerm(pipe.tokenizer, self.t5, kind_weights=MOTION_KINDS) if ground_weight > 0 else None

    def on_train_start(self) -> None:
        self.transformer.train()
        self.t5.train()

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                expressions: torch.Tensor | None = None, valid: torch.Tensor | None = None):
        """Mochi's output for a batch; with `expressions` [B, K, L, D] (`valid` [B, K, L]) the branch
        rides after the caption with its attention mask off, as `MochiExtractor.denoise` puts it,
        and the capture of its maps comes back too."""
        mask = mask.bool()
        capture = None
        if expressions is not None:
            embeds = torch.cat([embeds, expressions.flatten(1, 2).to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(x_t.shape[0], valid[0].numel())], dim=1)
            num_tokens = x_t.shape[2] * (x_t.shape[3] // 2) * (x_t.shape[4] // 2)
            capture = BatchCapture(valid.cpu(), mask.shape[1] - valid[0].numel(), num_tokens, len(self.processors),
                                   key_order=("image", "caption", "branch"))
            for processor in self.processors:
                processor.capture = capture
        try:
            prediction = self.transformer(hidden_states=x_t, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                          timestep=1000.0 * (1 - sigma), return_dict=False)[0]
        finally:
            for processor in self.processors:
                processor.capture = None
        return prediction if capture is None else (prediction, capture)

    def training_step(self, indices, batch_idx):
        indices = indices.tolist()
        x0 = self.data.latents[indices].float()
        clips = [self.data.clips[i] for i in indices]
        captions = ["" if self.rng.random() < self.empty_caption_rate else training_caption(c, self.rng) for c in clips]
        embeds, mask, _, _ = self.pipe.encode_prompt(prompt=captions, do_classifier_free_guidance=False,
                                                      max_sequence_length=self.caption_tokens, device=x0.device)
        batch = x0.shape[0]
        sigma = torch.sigmoid(torch.randn(batch) + self.t_mean)
        grounded = torch.zeros(batch)
        drawn, valid, kept, capture = None, None, None, None
        if self.grounding is not None:
            grounded = (torch.rand(batch) < self.ground_share).float()
            sigma = torch.where(grounded.bool(), torch.empty(batch).uniform_(*self.ground_sigma), sigma)
            drawn = self.grounding.draw(clips, self.rng)
            expr_embeds, valid, kept = self.grounding.encode(drawn, x0.device)
        noise = torch.randn_like(x0)
        s = sigma[:, None, None, None, None]
        x_t = (1 - s) * x0 + s * noise
        if drawn is None:
            prediction = self.denoise(x_t, sigma, embeds, mask)
        else:
            prediction, capture = self.denoise(x_t, sigma, embeds, mask, expr_embeds, valid)
        loss = F.mse_loss(prediction, x0 - noise)  # Mochi predicts x0 - eps (MochiExtractor.velocity_sign)
        self.log("flow/loss", loss, prog_bar=True)
        if capture is not None and grounded.any():
            cover = torch.zeros(batch, valid.shape[1], x0.shape[2] * (x0.shape[3] // 2) * (x0.shape[4] // 2))
            for b, (i, row) in enumerate(zip(indices, drawn)):
                for k, (expression, _) in enumerate(row):
                    cover[b, k] = self.data.cover[i][expression.target].float()
            ground = self.grounding.loss(capture.logits(), valid, kept, cover, grounded)
            self.log("ground/loss", ground, prog_bar=True)
            loss = loss + self.ground_weight * ground
        return loss

    def configure_optimizers(self):
        params = list(self.transformer.parameters()) + list(self.t5.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.lr_schedule,
                                                                                        self.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class VideoMonitor(L.Callback):
    """Scores the key-frame point on held-out clips every `every` steps (`refam.shapes.evaluate_video`)."""

    def __init__(self, pipe, folder: Path, every: int, clips: int) -> None:
        self.pipe, self.folder, self.every, self.clips = pipe, folder, every, clips
        self.history: list[list] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every or step % self.every:
            return
        from refam.shapes.evaluate_video import key_point_accuracy

        self.pipe.save_pretrained(self.folder, safe_serialization=True)
        scores = key_point_accuracy(str(self.folder), range(self.clips))
        self.history.append([step, scores])
        print(f"step {step}: key-frame point accuracy {json.dumps(scores)}", flush=True)
        pl_module.train()


def training_record(config: VideoModelConfig, seed: int, caption_tokens: int, empty_caption_rate: float,
                    ground_weight: float, ground_share: float, clips: int, batch_size: int, vae_steps: int,
                    flow_steps: int, vae_seconds: float, total_seconds: float, vae_log: Path, flow_log: Path,
                    monitored: list | None, previous: dict | None = None, command: str | None = None,
                    vae_source: dict | None = None, vae_crop: int = 32, vae_colour_weight: float = 1.0,
                    twin_rate: float = TWIN_RATE, lr_schedule: str = "constant", lr: float | None = None,
                    vae_motion_weight: float = 0.0, init_source: dict | None = None) -> dict:
    """What `training.json` holds: the command, every setting, the curves and the monitor's scores.
    A snapshot of a run stopped for time gets the same record, with the steps it reached."""
    record = {
        "command": command or "refam train-shapes-video " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "seed": seed, "model": config.to_dict(), "frame": list(FRAME), "clip_frames": CLIP_FRAMES,
        "caption_tokens": caption_tokens, "empty_caption_rate": empty_caption_rate,
        "ground_weight": ground_weight, "ground_share": ground_share, "training_clips": clips,
        "batch_size": batch_size, "vae_steps": vae_steps, "vae_crop": vae_crop,
        "vae_colour_weight": vae_colour_weight, "flow_steps": flow_steps, "twin_rate": twin_rate,
        "vae_motion_weight": vae_motion_weight,
        "lr": lr, "lr_schedule": lr_schedule,
        "vae_seconds": vae_seconds, "total_seconds": total_seconds,
        "machine": "2 CPU cores (refam development machine)",
        "vae_mse_curve": loss_curve(vae_log, "vae/mse"),
        "vae_colour_curve": loss_curve(vae_log, "vae/colour"),
        "vae_motion_curve": loss_curve(vae_log, "vae/motion") if vae_motion_weight else None,
        "flow_loss_curve": loss_curve(flow_log, "flow/loss"),
        "ground_loss_curve": loss_curve(flow_log, "ground/loss"),
        "key_point_accuracy_curve": monitored or None,
    }
    if init_source is not None:  # every part started from that run's model
        record["init_from"] = init_source
    if vae_source is not None:  # the autoencoder was trained by that run (its record), not this one
        record["vae_from"] = vae_source
    if previous is not None:
        record["resumed_from"] = previous
        record["total_seconds"] += previous.get("total_seconds", 0.0)
    return record


def train(output: Path, vae_steps: int, flow_steps: int, clips: int, batch_size: int, seed: int,
          config: VideoModelConfig, lr: float, caption_tokens: int, work_dir: Path, snapshot_every: int = 0,
          resume_from: Path | None = None, ground_weight: float = 1.0, ground_share: float = 0.5,
          monitor_every: int = 0, monitor_clips: int = 40, empty_caption_rate: float = 0.5,
          vae_from: Path | None = None, vae_crop: int = 32, vae_colour_weight: float = 1.0,
          twin_rate: float = TWIN_RATE, lr_schedule: str = "constant", vae_motion_weight: float = 0.0,
          init_from: Path | None = None) -> dict:
    """`resume_from`: a snapshot whose pipeline continues training; `vae_from`: a trained pipeline
    whose autoencoder (and latent statistics) a new transformer and T5 train on, stage 1 skipped;
    `init_from`: a trained pipeline whose every part starts both stages (the autoencoder trains on
    with this run's terms, its latent statistics are measured again, the transformer and T5 follow)."""
    from diffusers import MochiPipeline

    start = time.time()
    L.seed_everything(seed)
    previous, vae_source, init_source = None, None, None
    if resume_from is not None:
        pipe = MochiPipeline.from_pretrained(str(resume_from))
        previous = read_training_record(Path(resume_from) / "training.json") or {"folder": str(resume_from)}
        vae = pipe.vae.eval().requires_grad_(False)
        vae_seconds, vae_log = 0.0, Path(work_dir) / "no-vae-stage.csv"
        latents, clip_list, cover = encode_clips(vae, clips, twin_rate=twin_rate)
    elif vae_from is not None:
        parts = build_video_components(config, seed)
        parts["vae"] = vae = MochiPipeline.from_pretrained(str(vae_from)).vae.eval().requires_grad_(False)
        vae_source = {"folder": str(vae_from), "record": read_training_record(Path(vae_from) / "training.json")}
        vae_seconds, vae_log = 0.0, Path(work_dir) / "no-vae-stage.csv"
        latents, clip_list, cover = encode_clips(vae, clips, twin_rate=twin_rate)
        pipe = MochiPipeline(**parts)
    else:
        parts = build_video_components(config, seed)
        if init_from is not None:
            start_pipe = MochiPipeline.from_pretrained(str(init_from))
            parts = {name: getattr(start_pipe, name) for name in parts}
            init_source = {"folder": str(init_from), "record": read_training_record(Path(init_from) / "training.json")}
        vae = parts["vae"].requires_grad_(True)
        crops = DataLoader(ClipCrops(seed=seed, crop=vae_crop, with_velocity=vae_motion_weight > 0), batch_size=4)
        vae_trainer = _trainer(vae_steps, work_dir, "vae")
        stage = ColourReadoutStage(vae, lr=1e-3, kl_weight=1e-6, colour_weight=vae_colour_weight) \
            if vae_motion_weight == 0 else MotionReadoutStage(vae, lr=1e-3, kl_weight=1e-6, colour_weight=vae_colour_weight,
                                                               motion_weight=vae_motion_weight)
        vae_trainer.fit(stage, crops)
        vae.eval().requires_grad_(False)
        vae_seconds = time.time() - start
        vae_log = Path(vae_trainer.logger.log_dir) / "metrics.csv"
        latents, clip_list, cover = encode_clips(vae, clips, twin_rate=twin_rate)
        flat = latents.float().transpose(0, 1).flatten(1)
        vae.register_to_config(latents_mean=flat.mean(1).tolist(), latents_std=flat.std(1).tolist())
        pipe = MochiPipeline(**parts)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents = ((latents.float() - mean) * vae.config.scaling_factor / std).half()  # MochiExtractor.encode_clip
    data = LatentClips(latents, clip_list, cover)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    stage = VideoFlowStage(pipe, data, lr=lr, caption_tokens=caption_tokens, empty_caption_rate=empty_caption_rate,
                           seed=seed, ground_weight=ground_weight, ground_share=ground_share,
                           rope_mask=fixed_rope_mask(config.rope_fixed_dims, pipe.transformer.pos_frequencies),
                           lr_schedule=lr_schedule, total_steps=flow_steps)
    monitor = VideoMonitor(pipe, Path(work_dir) / "monitored", monitor_every, monitor_clips)
    flow_trainer = _trainer(flow_steps, work_dir, "flow", [SavePipelineEvery(pipe, Path(work_dir) / "snapshots", snapshot_every), monitor])
    flow_trainer.fit(stage, loader)
    pipe.transformer.eval()
    pipe.text_encoder.eval()
    for processor in stage.processors:  # the stock processors again: the saved model is plain Mochi
        processor.capture = None
    pipe.save_pretrained(output, safe_serialization=True)
    record = training_record(config, seed, caption_tokens, empty_caption_rate, ground_weight, ground_share, clips,
                             batch_size, vae_steps, flow_steps, round(vae_seconds, 1), round(time.time() - start, 1),
                             vae_log, Path(flow_trainer.logger.log_dir) / "metrics.csv", monitor.history, previous,
                             vae_source=vae_source, vae_crop=vae_crop, vae_colour_weight=vae_colour_weight,
                             twin_rate=twin_rate, lr_schedule=lr_schedule, lr=lr, vae_motion_weight=vae_motion_weight,
                             init_source=init_source)
    (Path(output) / "training.json").write_text(json.dumps(record, indent=1))
    return record
