"""Where a no-referent flag fires, and how often it is right: its side of one statistic (an absent
referent scores "below" or "above" a present one), the threshold that flags at most a given share of
present expressions on a calibration set, and its rates on another set. bench/no_referent.py
chooses the flag with these; `refam.referent.calibration` applies it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DIRECTIONS = ("below", "above")  # the flag fires when the statistic is below / above the threshold


def fires(value: float | np.ndarray, direction: str, threshold: float) -> bool | np.ndarray:
    """Whether the flag fires on `value` (strictly past the threshold, on the flag's side)."""
    return value < threshold if direction == "below" else value > threshold


def auroc(scores: Sequence[float], absent: Sequence[bool], direction: str = "above") -> float:
    """How well the statistic ranks absent above present on the flag's side (torchmetrics'
    `binary_auroc`, absent = positive; "below": the statistic negated)."""
    from torchmetrics.functional.classification import binary_auroc

    values = torch.tensor(np.asarray(scores, dtype=np.float64))
    return float(binary_auroc(values if direction == "above" else -values, torch.tensor(np.asarray(absent, dtype=int))))


def direction_of(scores: Sequence[float], absent: Sequence[bool]) -> str:
    """The side absent referents score on: "above" when the AUROC for absent exceeds 0.5."""
    return "above" if auroc(scores, absent) > 0.5 else "below"


def threshold_at(scores: Sequence[float], absent: Sequence[bool], direction: str, max_false_positive_rate: float) -> float:
    """The cut (a midpoint between two neighbouring values, or past either end) that flags the most
    absent expressions while flagging at most `max_false_positive_rate` of the present ones; the
    first such cut from the flag's far side (the fewest present flagged among equals)."""
    scores, absent = np.asarray(scores, dtype=np.float64), np.asarray(absent, dtype=bool)
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    if direction == "above":
        cuts = cuts[::-1]
    best, caught = float(cuts[0]), -1
    for cut in cuts:
        flagged = fires(scores, direction, cut)
        if flagged[~absent].mean() > max_false_positive_rate:
            break  # further on the flag flags more present ones still
        if flagged[absent].sum() > caught:
            best, caught = float(cut), int(flagged[absent].sum())
    return best


def rates(scores: Sequence[float], absent: Sequence[bool], direction: str, threshold: float) -> dict:
    """The flag's counts and rates on a set: recall (the share of absent referents flagged), false
    positive rate (the share of present ones flagged), precision (the share of flags that are right;
    None when none fires) and AUROC on the flag's side."""
    scores, absent = np.asarray(scores, dtype=np.float64), np.asarray(absent, dtype=bool)
    flagged = fires(scores, direction, threshold)
    return {"present": int((~absent).sum()), "absent": int(absent.sum()), "flagged": int(flagged.sum()),
            "recall": float(flagged[absent].mean()) if absent.any() else None,
            "false_positive_rate": float(flagged[~absent].mean()) if (~absent).any() else None,
            "precision": float(absent[flagged].mean()) if flagged.any() else None,
            "auroc": auroc(scores, absent, direction) if absent.any() and (~absent).any() else None}
