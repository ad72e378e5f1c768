"""Saliency-map segmentation scores: pixel accuracy, mIoU and mAP (REFAM Table 11).

The protocol of Chefer et al. 2021 as ConceptAttention (Helbling et al. 2025) runs it; one `update` is
one image's heatmap for its one class against that class's binary mask. Sources read:

- hila-chefer/Transformer-Explainability baselines/ViT/imagenet_seg_eval.py::eval_batch and
  utils/metrices.py::batch_pix_accuracy, batch_intersection_union, get_ap_scores.
- helblazer811/ConceptAttention@9c69fd5 experiments/imagenet_segmentation/run_experiment.py,
  experiments/pascal_voc_segmentation/run_single_class_split_experiment.py (same at b72fe06),
  concept_attention/utils.py (its copies of the three metric functions, with the `torch.max`
  channel argmax commented out) and concept_attention/segmentation.py::SegmentationAbstractClass.

Per image (ConceptAttention, the defaults here):
1. The ground truth is resized to 224×224 with PIL nearest (torchvision `Resize((224, 224),
   Image.NEAREST)`); `eval_size=None` scores at the ground truth's own resolution instead.
2. The heatmap is binarised on its own grid: foreground where `heatmap > heatmap.mean()`.
3. The heatmap is min-max normalised on its own grid, then heatmap and binary mask are upsampled
   with `F.interpolate(mode="nearest")` to the evaluation size. (Chefer upsamples ×16 with
   `mode="bilinear"` first and normalises and thresholds after: `resize="bilinear",
   threshold_before_resize=False`.)
4. Pixel accuracy and the (background, foreground) intersection and union are summed over the
   dataset; mIoU is the mean of the two classes' ΣI/ΣU.
5. AP is `get_ap_scores`: sklearn's `average_precision_score` over the 2·H·W entries of the scores
   `[1 - s, s]` against the one-hot labels `[background, foreground]` (so both channels in one
   ranking), void pixels (label -1) dropped from both channels; NaN scores and a NaN AP read 0.
   mAP is the mean of the per-image APs. Here torchmetrics' `binary_average_precision` (exact,
   `thresholds=None`, sklearn's step-wise definition and tie handling) computes it; it divides in
   float32, so it agrees with sklearn's float64 to about 1e-7 (tests check 1e-6).

A constant heatmap has no min-max normalisation (0/0 = NaN in the reference): its mask is all
background, and both AP channels score 0 (the reference's `nan_to_num`), which gives AP = 0.5.

`variant` reproduces how the two ConceptAttention scripts count pixels:
- "standard": void pixels are ignored everywhere (Chefer's definition; ConceptAttention's VOC IoU).
- "conceptattention-imagenet": its ImageNet script feeds the stacked `(1-mask, mask)` and
  `(1-label, label)` to `batch_intersection_union` without the argmax, so both "classes" get
  I = TP+TN and U = 2N - (TP+TN): mIoU = ΣC / (2ΣN - ΣC), a function of pixel accuracy.
- "conceptattention-voc": its VOC script's `batch_pix_accuracy` on the stacked tensors counts each
  void pixel once in the denominator and never as correct: Acc = 2ΣC / (2ΣN + ΣN_void).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_average_precision

from refam.metrics.iou import _as_bool_tensor

Variant = Literal["standard", "conceptattention-imagenet", "conceptattention-voc"]
VARIANTS = ("standard", "conceptattention-imagenet", "conceptattention-voc")
REFERENCE_EVAL_SIZE = (224, 224)


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool [H, W] mask resized to `size` = (height, width) exactly as PIL's NEAREST does it.

    torchvision's `Resize(..., Image.NEAREST)` on a PIL image calls PIL; PIL's nearest picks
    different source pixels than `F.interpolate(mode="nearest")`, so the reference's is used.
    """
    image = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(image.resize((size[1], size[0]), Image.NEAREST)) != 0


def _average_precision(preds: Tensor, labels: Tensor) -> float:
    """Exact binary AP (sklearn's step-wise definition); no entries gives 0, like `nan_to_num`."""
    if preds.numel() == 0:
        return 0.0
    low, high = preds.min(), preds.max()
    if low < 0 or high > 1:
        # torchmetrics would take values outside [0, 1] for logits and apply a sigmoid, which
        # saturates large scores into false ties; an affine map keeps the ranking and its ties.
        preds = (preds - low) / (high - low)
    return float(binary_average_precision(preds, labels.long(), thresholds=None, validate_args=False))


def two_channel_average_precision(scores: Tensor, target: Tensor, valid: Tensor) -> float:
    """`get_ap_scores` for one image: AP of `[1 - scores, scores]` against `[~target, target]`.

    `scores` float [H, W], `target` and `valid` bool [H, W]; invalid (void) pixels are dropped from
    both channels. No valid pixel gives 0 (the reference's `nan_to_num` of an undefined AP).
    """
    scores, target = scores[valid], target[valid]
    # 1 - s in float32 as the reference does; float64 afterwards so that rescaling raw scores into
    # [0, 1] cannot merge distinct values into ties.
    return _average_precision(torch.cat([1.0 - scores, scores]).double(), torch.cat([~target, target]))


class SaliencyScores(Metric):
    """Acc, mIoU (two classes) and mAP of heatmaps against binary masks, ×100; see module docstring.

    `update(heatmap, target, void=None, mask=None)`:
    - `heatmap` float [h, w] on any grid (e.g. the 64×64 token grid);
    - `target` bool [H, W] at the image's original resolution;
    - `void` bool [H, W]: pixels to ignore (VOC's 255 border), or None;
    - `mask` bool [h', w']: a ready binary prediction replacing the mean threshold (ConceptAttention's
      VOC script uses its argmax over concepts), upsampled with nearest.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    labelled: Tensor
    inter: Tensor
    union: Tensor
    ap_sum: Tensor
    count: Tensor

    def __init__(
        self,
        eval_size: tuple[int, int] | None = REFERENCE_EVAL_SIZE,
        resize: Literal["nearest", "bilinear"] = "nearest",
        threshold_before_resize: bool = True,
        normalize: bool = True,
        variant: Variant = "standard",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if resize not in ("nearest", "bilinear"):
            raise ValueError(f"resize must be 'nearest' or 'bilinear', got {resize!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if eval_size is not None and (len(eval_size) != 2 or min(eval_size) < 1):
            raise ValueError(f"eval_size must be (height, width) of positive ints or None, got {eval_size!r}")
        self.eval_size = tuple(int(v) for v in eval_size) if eval_size is not None else None
        self.resize = resize
        self.threshold_before_resize = threshold_before_resize
        self.normalize = normalize
        self.variant = variant
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("labelled", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        # index 0 is background, 1 foreground (the reference's histogram bins)
        self.add_state("inter", default=torch.zeros(2, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.zeros(2, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("ap_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _upsample(self, x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
        if tuple(x.shape) == size:
            return x
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x[None, None].float(), size=size, mode=mode, **kwargs)[0, 0]

    def _scores_and_mask(
        self, heatmap: Tensor, size: tuple[int, int], mask: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        """(scores for AP, binary prediction) at `size`; scores are None where the reference's are NaN."""
        if not self.threshold_before_resize:  # Chefer: resize, then normalise and threshold
            heatmap = self._upsample(heatmap, size, self.resize)
        constant = bool(heatmap.max() == heatmap.min())
        scores: Tensor | None = heatmap  # ConceptAttention's VOC script ranks its raw coefficients
        if self.normalize:
            # a constant map is 0/0 = NaN in the reference: no scores (see `update`)
            scores = None if constant else (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())
        if mask is None:
            # strict ">"; a constant map is all background (NaN > NaN in the reference). ConceptAttention
            # thresholds the raw map on its grid, Chefer the normalised, resized one: same pixels
            # but for rounding, and each is reproduced exactly.
            if constant:
                mask = torch.zeros_like(heatmap, dtype=torch.bool)
            else:
                basis = heatmap if self.threshold_before_resize or scores is None else scores
                mask = basis > basis.mean()
        scores = None if scores is None else self._upsample(scores, size, self.resize)
        mask = self._upsample(mask, size, "nearest") > 0.5
        return scores, mask

    def update(
        self,
        heatmap: Tensor | np.ndarray | None = None,
        target: Tensor | np.ndarray | None = None,
        void: Tensor | np.ndarray | None = None,
        mask: Tensor | np.ndarray | None = None,
        *,
        counts: dict | None = None,
    ) -> None:
        """One image: its heatmap and masks, or `counts`, what `contribution` returned for them before
        (a stored result; adding it gives the same states bit for bit)."""
        c = counts if counts is not None else self.contribution(heatmap, target, void, mask)
        self.correct += int(c["correct"])
        self.labelled += int(c["labelled"])
        self.inter += torch.tensor([int(v) for v in c["inter"]], dtype=torch.int64, device=self.inter.device)
        self.union += torch.tensor([int(v) for v in c["union"]], dtype=torch.int64, device=self.union.device)
        self.ap_sum += float(c["ap"])
        self.count += 1

    def contribution(
        self,
        heatmap: Tensor | np.ndarray,
        target: Tensor | np.ndarray,
        void: Tensor | np.ndarray | None = None,
        mask: Tensor | np.ndarray | None = None,
    ) -> dict:
        """What one image adds to the sums: {"correct", "labelled", "inter": [bg, fg], "union": [bg, fg],
        "ap"}, plain numbers (JSON-storable)."""
        heatmap = torch.as_tensor(heatmap).float()
        if heatmap.ndim != 2:
            raise ValueError(f"heatmap must be 2-D [h, w], got shape {tuple(heatmap.shape)}")
        if not torch.isfinite(heatmap).all():
            raise ValueError("heatmap has NaN or infinite values; fix the extractor rather than scoring them")
        target_np = _as_bool_tensor(target, "target").cpu().numpy()
        if target_np.ndim != 2:
            raise ValueError(f"target must be a 2-D mask [H, W], got shape {target_np.shape}")
        void_np = None if void is None else _as_bool_tensor(void, "void").cpu().numpy()
        if void_np is not None and void_np.shape != target_np.shape:
            raise ValueError(f"void {void_np.shape} and target {target_np.shape} must have the same shape")
        pred_mask = None if mask is None else _as_bool_tensor(mask, "mask").to(heatmap.device)
        if self.eval_size is not None:
            target_np = resize_mask_nearest(target_np, self.eval_size)
            void_np = None if void_np is None else resize_mask_nearest(void_np, self.eval_size)
        size = (int(target_np.shape[0]), int(target_np.shape[1]))
        device = heatmap.device
        gt = torch.from_numpy(target_np).to(device)
        valid = torch.ones_like(gt) if void_np is None else ~torch.from_numpy(void_np).to(device)

        scores, pred = self._scores_and_mask(heatmap, size, pred_mask)
        tp = int((pred & gt & valid).sum())
        tn = int((~pred & ~gt & valid).sum())
        fp = int((pred & ~gt & valid).sum())
        fn = int((~pred & gt & valid).sum())
        n_valid, n_void = int(valid.sum()), int((~valid).sum())
        right = tp + tn
        if self.variant == "conceptattention-imagenet":
            if n_void:
                raise ValueError("variant 'conceptattention-imagenet' takes no void pixels; use 'standard'")
            out = {"correct": right, "labelled": n_valid, "inter": [right, right], "union": [2 * n_valid - right] * 2}
        else:
            if self.variant == "conceptattention-voc":
                out = {"correct": 2 * right, "labelled": 2 * n_valid + n_void}
            else:
                out = {"correct": right, "labelled": n_valid}
            out.update(inter=[tn, tp], union=[tn + fp + fn, tp + fp + fn])

        if scores is None:
            # NaN in both channels becomes 0 in the reference (not 1 - 0 and 0): every entry ties
            ap = _average_precision(torch.zeros(2 * n_valid, dtype=torch.float64, device=device),
                                    torch.cat([~gt[valid], gt[valid]]))
        else:
            ap = two_channel_average_precision(scores, gt, valid)
        out["ap"] = float(ap)
        return out

    def compute(self) -> dict[str, Tensor]:
        device = self.correct.device
        zero = torch.zeros((), dtype=torch.float64, device=device)
        acc = self.correct.double() / self.labelled.double() * 100.0 if self.labelled > 0 else zero
        # a class never present nor predicted has IoU 0, as with the reference's eps-guarded division
        iou = torch.where(self.union > 0, self.inter.double() / self.union.clamp(min=1).double(), zero)
        mean_ap = self.ap_sum / self.count * 100.0 if self.count > 0 else zero
        return {"Acc": acc, "mIoU": iou.mean() * 100.0, "mAP": mean_ap, "images": self.count.clone()}
