"""The auxiliary grounding term of refam-shapes v2 (issue G, option 2: supervised, documented).

Emergent grounding (the flow-matching loss alone) stayed weak or at chance in every run recorded in
docs/refam-shapes.md, so v2 adds an explicit term on a share of each batch. It reads the maps
exactly where inference reads them: the referring expressions ride the SAME expression branch as
`FluxExtractor` (`install_flux_branch`, `BranchLayout`, `branch_attention`: expression
queries see their own tokens and the image, nothing sees them, so the velocity, and with it the
flow-matching loss, is unchanged), the image-query x expression-key scores are averaged over heads
and blocks as `AttentionCapture` does ("after_mean"), and the softmax across the expression's tokens
per patch is the aggregator's. The term then asks, per patch, that the referent's cells give their
mass to the expression's kept tokens (the words the aggregator averages) and every other cell to the
rest (stop words, magnets, EOS), plus that the kept-token heatmap's softmax over patches lands on
the referent. The flow-matching loss stays the main objective; this term has weight
`--ground-weight` and runs on `--ground-share` of the batch, at the observation noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refam.aggregators.magnets import PAPER_MAGNETS, AppendMagnets
from refam.extractors.capture import BranchLayout
from refam.shapes.absent import absent_expressions
from refam.shapes.scenes import Scene
from refam.text.t5 import T5Reader


def cell_coverage(mask: np.ndarray, frame: int, grid: int) -> torch.Tensor:
    """[grid, grid] fraction of each token cell an object covers, once its mask is resized to the
    square frame the extractor resizes images to (`FluxExtractor.resolution`)."""
    resized = Image.fromarray(mask.astype(np.float32)).resize((frame, frame), Image.BILINEAR)
    cells = torch.from_numpy(np.array(resized, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(cells, grid)[0, 0].clamp(0, 1)


@dataclass
class Expression:
    text: str  # with magnets appended, as `AppendMagnets.augment` writes it
    magnet_start: int | None
    target: int | None  # object index in the scene; None: the expression names nothing in it


class BatchCapture:
    """The branch processors' capture for a training batch: per item, per block, the image-query x
    expression-key logits (mean over heads, 1/sqrt(d)), kept with their graph.

    It has what `refam.extractors.branch.joint_branch` reads of an `AttentionCapture` (layout, a key bias,
    the selected blocks, the representation and `add`); the key bias is per item [B, K L, S]
    because each scene's expressions have their own padding."""

    representation = "cross_attention"

    def __init__(self, valid: torch.Tensor, caption_len: int, num_image_tokens: int, num_blocks: int,
                 key_order: tuple[str, ...] = ("branch", "caption", "image")) -> None:
        self.layout = BranchLayout(caption_len=caption_len, key_valid=valid[0], key_order=key_order)
        self.key_bias = torch.stack([BranchLayout(caption_len, v, key_order).key_bias(num_image_tokens) for v in valid])
        self.selected_blocks = set(range(num_blocks))
        self.batch, self.num_blocks = valid.shape[0], num_blocks
        self._logits: list[torch.Tensor] = []

    def add(self, q_img: torch.Tensor, k_expr: torch.Tensor, text_probs: torch.Tensor) -> None:
        heads, head_dim = q_img.shape[1], q_img.shape[2]
        logits = q_img.flatten(1) @ k_expr.flatten(2).flatten(0, 1).T
        self._logits.append(logits.view(q_img.shape[0], *k_expr.shape[:2]) * (head_dim**-0.5 / heads))

    def logits(self) -> torch.Tensor:
        """[B, N, K, L]: the mean over blocks (calls come block by block, item by item)."""
        stacked = torch.stack(self._logits).unflatten(0, (self.num_blocks, self.batch))
        return stacked.mean(dim=0)


class GroundingTerm:
    """Draws referring expressions for training scenes, encodes them with the model's T5 (with
    gradients) and scores the branch's maps against the referents.

    Args:
        tokenizer, encoder: the pipeline's T5 tokenizer and encoder (`tokenizer_2`, `text_encoder_2`).
        expressions_per_scene: K, the branch's expressions per item (fewer when a scene has fewer).
        magnet_rate: share of expressions with the paper's magnets appended; the rest have none, so
            that the ablation rows without magnets are not off the training distribution.
        sharpness: the heatmap's inverse temperature in the softmax over patches.
        kind_weights: how much likelier an expression of each kind (`Referral.kind`) is drawn than
            one of a kind not named (1); refam-shapes-video draws its motion kinds more often.
        absent_share: chance that a drawn expression is replaced by one naming a colour, shape or
            colour-shape pair the scene lacks (`refam.shapes.absent`), whose coverage is all zero:
            every cell is then asked to give its mass to the rest tokens, which is what a
            "no referent" flag can read. 0 (the default) draws exactly as before.
    """

    def __init__(self, tokenizer, encoder, expressions_per_scene: int = 3, magnet_rate: float = 0.75,
                 sharpness: float = 10.0, kind_weights: dict[str, float] | None = None,
                 absent_share: float = 0.0) -> None:
        self.encoder = T5Reader(tokenizer, encoder, max_tokens=10_000)
        self.t5 = encoder
        self.k = expressions_per_scene
        self.magnet_rate = magnet_rate
        self.sharpness = sharpness
        self.kind_weights = kind_weights or {}
        self.absent_share = absent_share
        self.with_magnets = AppendMagnets(PAPER_MAGNETS, filter_stop_words=True)
        self.without_magnets = AppendMagnets([], filter_stop_words=True)

    def draw(self, scenes: list[Scene], rng: np.random.Generator) -> list[list[tuple[Expression, AppendMagnets]]]:
        drawn = []
        for scene in scenes:
            referrals = list(scene.referrals)
            if self.kind_weights and referrals:
                weights = np.array([self.kind_weights.get(r.kind, 1.0) for r in referrals])
                picks = rng.choice(len(referrals), size=min(self.k, len(referrals)), replace=False, p=weights / weights.sum())
            else:  # refam-shapes' own draw, kept so that its recorded training replays
                picks = rng.permutation(len(referrals))[: self.k] if referrals else []
            row = []
            for i in picks:
                strategy = self.with_magnets if rng.random() < self.magnet_rate else self.without_magnets
                phrase, target = referrals[i].text, referrals[i].target
                # rng is read only with a share set, so that recorded runs (share 0) replay their draws
                if self.absent_share and rng.random() < self.absent_share:
                    absent = absent_expressions(scene, rng)
                    if absent:
                        phrase, target = absent[int(rng.integers(len(absent)))][0], None
                text, start = strategy.augment(phrase)
                row.append((Expression(text, start, target), strategy))
            drawn.append(row)
        return drawn

    def encode(self, drawn, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """embeds [B, K, L, D] (with gradients into T5), valid [B, K, L], kept [B, K, L]."""
        flat = [(e.text, e.magnet_start) for row in drawn for e, _ in row]
        enc, tokens = self.encoder.tokenize_batch(flat)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        embeds = self.t5(input_ids=ids, attention_mask=mask)[0]
        length, dim = embeds.shape[1], embeds.shape[2]
        batch = len(drawn)
        out = embeds.new_zeros(batch, self.k, length, dim)
        valid = torch.zeros(batch, self.k, length, dtype=torch.bool, device=device)
        kept = torch.zeros_like(valid)
        j = 0
        for b, row in enumerate(drawn):
            for k, (expression, strategy) in enumerate(row):
                out[b, k] = embeds[j]
                valid[b, k] = mask[j].bool()
                flags = strategy.keep(tokens[j], expression.text)
                kept[b, k, : len(flags)] = torch.tensor(flags, device=device)
                j += 1
        return out, valid, kept & valid

    def loss(self, logits: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor, coverage: torch.Tensor,
             weight: torch.Tensor) -> torch.Tensor:
        """logits [B, N, K, L]; valid, kept [B, K, L]; coverage [B, K, N] of each expression's
        referent (all zero when it names nothing in the scene); weight [B] (0 for items without the
        term). Mean over the expressions used."""
        logits = logits.permute(0, 2, 1, 3)  # [B, K, N, L]
        rest = valid & ~kept
        used = (kept.any(-1) & rest.any(-1)).float() * weight[:, None]  # [B, K]
        if used.sum() == 0:
            return logits.sum() * 0.0
        # a large finite fill, not -inf: an unused slot (no valid token) must give zero gradients, not NaN
        log_p = logits.masked_fill(~valid[:, :, None], -1e4).log_softmax(dim=-1)
        log_p = log_p.masked_fill(~valid[:, :, None], 0.0)
        on_kept = (log_p * kept[:, :, None]).sum(-1) / kept.sum(-1, keepdim=True).clamp(min=1)
        on_rest = (log_p * rest[:, :, None]).sum(-1) / rest.sum(-1, keepdim=True).clamp(min=1)
        cover = coverage
        patch_ce = -(cover * on_kept + (1 - cover) * on_rest)  # [B, K, N]
        inside = cover / cover.sum(-1, keepdim=True).clamp(min=1e-6)
        outside = (1 - cover) / (1 - cover).sum(-1, keepdim=True).clamp(min=1e-6)
        # an absent referent has no inside: its per-patch part is the outside's alone at full weight
        # (every cell to the rest tokens) and the spatial part, a place to land on, does not apply
        present = cover.sum(-1) > 0  # [B, K]
        halves = torch.where(present, 0.5, 1.0)
        per_patch = halves * ((inside + outside) * patch_ce).sum(-1)
        heat = (log_p.exp() * kept[:, :, None]).sum(-1) / kept.sum(-1, keepdim=True).clamp(min=1)
        spatial = -(inside * (self.sharpness * heat).log_softmax(dim=-1)).sum(-1) * present
        return ((per_patch + spatial) * used).sum() / used.sum()
