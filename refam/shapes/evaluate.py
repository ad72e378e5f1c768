"""Score refam-shapes on a shapes set under several settings; prints markdown tables.

    python -m refam.shapes.evaluate [--model refam/embedded/refam-shapes] [--manifest assets/shapes-demo/manifest.jsonl]
    python -m refam.shapes.evaluate --sigmas 0.5 0.9

The paper's ablation tables run on the demo set through `refam ablate --table N --base configs/demo.yaml`;
this script keeps the magnet x stop-word-filter grid and the noise-level scan of docs/refam-shapes.md.

Each row runs the same `RefAMPipeline.segment_sample` as `refam test`, with only the magnet strategy
(or the noise level) changed, so rows differ by exactly that setting.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from refam.aggregators.magnets import PAPER_MAGNETS, AppendMagnets, MagnetStrategy
from refam.aggregators.spatial import SpatialBias
from refam.data.manifest import ManifestDataset
from refam.embedded import REFAM_SHAPES
from refam.extractors.flux import FluxExtractor
from refam.extractors.trajectory import NoiseAt
from refam.pipeline import RefAMPipeline
from refam.metrics import ReferringScores, point_hit
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.sections import shapes_settings

MAGNET_ROWS: dict[str, MagnetStrategy] = {
    "magnets + stop-word filter (paper)": AppendMagnets(PAPER_MAGNETS, filter_stop_words=True),
    "magnets, no stop-word filter": AppendMagnets(PAPER_MAGNETS, filter_stop_words=False),
    "no magnets, stop-word filter": AppendMagnets([], filter_stop_words=True),
    "no magnets, no stop-word filter": AppendMagnets([], filter_stop_words=False),
}


def build_pipeline(model: str, magnets: MagnetStrategy, sigma: float = 0.75,
                   pooled_prompt: str | None = None, spatial_bias: SpatialBias | None = None,
                   keep_aspect: bool = False) -> RefAMPipeline:
    extractor = FluxExtractor(model, trajectory=NoiseAt(sigma), keep_aspect=keep_aspect,
                              **shapes_settings(model, pooled_prompt))
    pipeline = RefAMPipeline(extractor=extractor, segmenter=FloodFillSegmenter(), magnets=magnets,
                             spatial_bias=spatial_bias)
    pipeline.setup("cpu")
    return pipeline


def evaluate(pipeline: RefAMPipeline, dataset: ManifestDataset, kinds: dict[str, str]) -> dict:
    scores = ReferringScores()
    hits_by_kind: dict[str, list[bool]] = defaultdict(list)
    areas = []
    for index in range(len(dataset)):
        sample = dataset[index]
        truth = {e.expression_id: e.mask for e in sample.expressions}
        for prediction in pipeline.segment_sample(sample).predictions:
            target = torch.from_numpy(truth[prediction.expression_id])
            scores.update(torch.from_numpy(prediction.mask), prediction.point, target)
            hits_by_kind[kinds.get(prediction.expression_id, "?")].append(point_hit(prediction.point, target))
            areas.append(float(target.float().mean()))
    values = {k: float(v) for k, v in scores.compute().items()}
    values["chance"] = 100 * float(np.mean(areas))
    values["PA by kind"] = {k: (100 * float(np.mean(v)), len(v)) for k, v in sorted(hits_by_kind.items())}
    return values


def expression_kinds(manifest: Path) -> dict[str, str]:
    kinds = {}
    for line in manifest.read_text().splitlines():
        for e in json.loads(line)["expressions"]:
            kinds[e["id"]] = e.get("kind", "?")
    return kinds


def print_drawn_checks(model: str, scenes: int) -> None:
    """Named-shape accuracy at 128 x 128 and at the drawn sizes, the follow rate and the cross-scene
    correlation (refam.shapes.drawn), with the paper's magnets."""
    from refam.shapes.drawn import cross_scene_correlation, follow_rate, named_shape_scores

    pipeline = build_pipeline(model, MAGNET_ROWS["magnets + stop-word filter (paper)"])
    print(f"Scenes a user would draw ({scenes} held-out varied scenes, no caption)\n")
    print("| check | value | expressions |\n| --- | --- | --- |")
    for label, size in (("128 x 128", 128), ("drawn sizes and aspects", None)):
        named = named_shape_scores(pipeline, scenes, width=size, height=size)
        print(f"| the <colour> <shape>, {label}: PA | {100 * named.point_accuracy:.1f} | {named.expressions} |")
        print(f"| the <colour> <shape>, {label}: mean mask IoU | {named.mean_iou:.3f} | {named.expressions} |")
    follow = follow_rate(pipeline, scenes)
    print(f"| a moved shape: the point moved with it | {100 * follow.moved_with:.1f} | {follow.pairs} pairs |")
    print(f"| a moved shape: the point on it before and after | {100 * follow.on_target_both:.1f} | {follow.pairs} pairs |")
    for text in CORRELATION_EXPRESSIONS:
        print(f"| cross-scene heatmap correlation, {text} (8 scenes) | {cross_scene_correlation(pipeline, text, 8):.3f} | 8 |")
    print()


CORRELATION_EXPRESSIONS = ("the yellow square", "the red circle", "the blue triangle")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REFAM_SHAPES))
    parser.add_argument("--manifest", type=Path, default=Path("assets/shapes-demo/manifest.jsonl"))
    parser.add_argument("--sigmas", type=float, nargs="*", default=[], help="also score the paper row at these noise levels")
    parser.add_argument("--drawn", type=int, default=0,
                        help="also run the checks on N scenes a user would draw (refam.shapes.drawn), no caption")
    args = parser.parse_args(argv)
    if args.drawn:
        print_drawn_checks(args.model, args.drawn)
    dataset = ManifestDataset(str(args.manifest))
    kinds = expression_kinds(args.manifest)
    rows = {}
    for name, magnets in MAGNET_ROWS.items():
        start = time.time()
        rows[name] = evaluate(build_pipeline(args.model, magnets), dataset, kinds)
        rows[name]["seconds"] = time.time() - start
    for sigma in args.sigmas:
        rows[f"paper setting at sigma {sigma:g}"] = evaluate(
            build_pipeline(args.model, MAGNET_ROWS["magnets + stop-word filter (paper)"], sigma), dataset, kinds)
    print(f"{len(kinds)} expressions; chance PA (mean target area) {next(iter(rows.values()))['chance']:.1f}\n")
    print("| setting | PA | mIoU | oIoU |\n| --- | --- | --- | --- |")
    for name, v in rows.items():
        print(f"| {name} | {v['PA']:.1f} | {v['mIoU']:.1f} | {v['oIoU']:.1f} |")
    names = list(rows)
    kinds_seen = list(rows[names[0]]["PA by kind"])
    print("\nPA by expression kind\n\n| kind | n | " + " | ".join(names) + " |\n| --- | --- |" + " --- |" * len(names))
    for kind in kinds_seen:
        n = rows[names[0]]["PA by kind"][kind][1]
        print(f"| {kind} | {n} | " + " | ".join(f"{rows[r]['PA by kind'][kind][0]:.1f}" for r in names) + " |")


if __name__ == "__main__":
    main()
