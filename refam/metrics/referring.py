"""The scores of one referring-segmentation dataset, kept together."""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection, SumMetric

from refam.metrics.davis import PROTOCOLS, RunScores
from refam.metrics.iou import MeanIoU, OverallIoU, intersection_union
from refam.metrics.jf import JandF, TrackScores
from refam.metrics.point import PointAccuracy, point_hit


def _collection(metrics: dict[str, Metric]) -> MetricCollection:
    # each metric updated on its own; no shared states (compute groups would merge metrics whose
    # states happen to agree after the first update, such as two counters both at 1)
    return MetricCollection(metrics, compute_groups=False)


def _computed(collection: MetricCollection) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        # a process may have had no sample of this dataset: its sums are simply zero
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return collection.compute()


class ReferringScores(torch.nn.Module):
    """mIoU, oIoU and point accuracy, plus how many expressions were scored and how many skipped.

    Every state is a sum, so scores gathered from any number of processes equal one process.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scores = _collection({"mIoU": MeanIoU(), "oIoU": OverallIoU(), "PA": PointAccuracy(),
                                   "expressions": SumMetric(), "skipped_samples": SumMetric(),
                                   "skipped_expressions": SumMetric()})

    miou = property(lambda self: self.scores["mIoU"])
    oiou = property(lambda self: self.scores["oIoU"])
    pa = property(lambda self: self.scores["PA"])
    expressions = property(lambda self: self.scores["expressions"])
    skipped_samples = property(lambda self: self.scores["skipped_samples"])
    skipped_expressions = property(lambda self: self.scores["skipped_expressions"])

    def update(self, mask: torch.Tensor, point: tuple[float, float], target: torch.Tensor) -> None:
        self.update_counts(*intersection_union(mask, target), point_hit(point, target))

    def update_counts(self, intersection: int, union: int, hit: bool) -> None:
        """One expression from its pixel counts and point hit: what `update` computes from the masks,
        so a stored result fed back gives the same states bit for bit."""
        self.miou.update(counts=(intersection, union))
        self.oiou.update(counts=(intersection, union))
        self.pa.update(hit=hit)
        self.expressions.update(1)

    def compute(self) -> dict[str, torch.Tensor]:
        return _computed(self.scores)

    def reset(self) -> None:
        self.scores.reset()


class VideoReferringScores(torch.nn.Module):
    """J&F (the official DAVIS definitions) and point accuracy on the prompted frame, plus how many
    expressions were scored and skipped. Sums only, as above.

    `protocol` picks the headline J&F, J and F (`refam.metrics.davis.PROTOCOLS`):
    - "per_expression": one track per expression (`jf`), as MeViS scores;
    - "unsupervised": the DAVIS 2017 unsupervised evaluation of each annotator run's palette
      frames, averaged over the runs (`runs`), as Ref-DAVIS17 is published; the per-expression
      figures are then also reported, as `J&F_per_expression` etc., and each run's as `J&F_anno<k>`.
    """

    def __init__(self, protocol: str = "per_expression") -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.jf, self.runs = JandF(), RunScores()  # each computes several figures (below)
        self.counts = _collection({"PA": PointAccuracy(), "expressions": SumMetric(), "skipped_samples": SumMetric(),
                                   "skipped_expressions": SumMetric()})

    pa = property(lambda self: self.counts["PA"])
    expressions = property(lambda self: self.counts["expressions"])
    skipped_samples = property(lambda self: self.counts["skipped_samples"])
    skipped_expressions = property(lambda self: self.counts["skipped_expressions"])

    def update_track(self, track: TrackScores) -> None:
        """One expression's finished track (per-frame J and F), computed now or stored before."""
        self.jf.update(track)
        self.expressions.update(1)

    def compute(self) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            jf = self.jf.compute()
            values = {"J&F": jf["J&F-Mean"], "J": jf["J-Mean"], "F": jf["F-Mean"], **_computed(self.counts)}
            if self.protocol == "unsupervised":
                runs = self.runs.compute()
                values.update({"J&F_per_expression": values["J&F"], "J_per_expression": values["J"],
                               "F_per_expression": values["F"]})
                values.update({"J&F": runs["J&F-Mean"], "J": runs["J-Mean"], "F": runs["F-Mean"]})
                values.update({f"J&F_anno{k}": runs[f"run{k}/J&F-Mean"] for k in range(len(self.runs.runs))
                               if f"run{k}/J&F-Mean" in runs})
            return values

    def describe(self, values: dict[str, torch.Tensor]) -> str:
        """What the headline J&F is, with the other figures, for the printed results."""
        text = f"J&F, J, F: {PROTOCOLS[self.protocol]}"
        if self.protocol == "unsupervised":
            runs = " ".join(f"{float(v):.2f}" for k, v in values.items() if k.startswith("J&F_anno"))
            text += (f"; each run's J&F: {runs or '(none scored)'}; per expression (MeViS-style): "
                     f"J&F {float(values['J&F_per_expression']):.2f}")
        return text

    def reset(self) -> None:
        for metric in (self.jf, self.runs, self.counts):
            metric.reset()
