"""What the attention-map cache saves: the demo evaluation (`refam test --config configs/demo.yaml`:
refam-shapes, 60 images, 297 expressions) run in process, `RefAMPipeline.segment_sample` over the
manifest, with a cold cache, then again with a warm cache where only the aggregation changes.

    python bench/map_cache.py                # CPU, one torch thread
    python bench/map_cache.py --threads 2 --aggregation-gas redirect

Prints, measured in one run (weights loaded once, before any timing):
  no cache     the evaluation as it runs without `model.map_cache`
  cold cache   every sample extracted and written (the first run of a sweep)
  warm cache   the aggregation changed (SoftmaxMeanAggregator gas "report" -> `--aggregation-gas`):
               every sample read from the cache, no DiT forward
and the speed-up no cache / warm cache, the write overhead cold / no cache, the cache's size on
disk, and checks that the warm run's predictions equal a fresh uncached run with the new aggregation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate(module, samples) -> tuple[float, list]:
    start = time.perf_counter()
    results = [module.segment_sample(s) for s in samples]
    return time.perf_counter() - start, results


def same(first, second) -> bool:
    return all(
        np.array_equal(p.mask, q.mask) and p.point == q.point and torch.equal(p.heatmap, q.heatmap)
        for a, b in zip(first, second) for p, q in zip(a.predictions, b.predictions, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml")
    parser.add_argument("--manifest", type=Path, default=ROOT / "assets/shapes-demo/manifest.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aggregation-gas", default="drop", help="the warm run's SoftmaxMeanAggregator gas")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from refam.aggregators.base import SoftmaxMeanAggregator
    from refam.api import pipeline_from_config
    from refam.data.manifest import ManifestDataset
    from refam.extractors.cache import MapCache

    module = pipeline_from_config(args.config)
    module.extractor.setup(torch.device("cpu"))
    module.segmenter.setup(torch.device("cpu"))
    dataset = ManifestDataset(str(args.manifest))
    samples = [dataset[i] for i in range(len(dataset))]  # images decoded before timing, as a loader would
    expressions = sum(len(s.expressions) for s in samples)
    evaluate(module, samples[:2])  # warm-up (first-call allocations)

    with tempfile.TemporaryDirectory() as folder:
        module.map_cache = None
        plain, _ = evaluate(module, samples)
        module.map_cache = MapCache(folder)
        cold, _ = evaluate(module, samples)
        assert module.map_cache.misses == len(samples), module.map_cache.misses
        size = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))

        module.aggregator = SoftmaxMeanAggregator(gas=args.aggregation_gas)
        module.map_cache = MapCache(folder)
        warm, warm_results = evaluate(module, samples)
        assert module.map_cache.hits == len(samples) and module.map_cache.misses == 0
        module.map_cache = None
        fresh, fresh_results = evaluate(module, samples)

    print(f"config {args.config.name}: {len(samples)} images, {expressions} expressions, "
          f"torch threads {args.threads}, cache {size / 1e6:.1f} MB ({size / len(samples) / 1e3:.0f} kB/image)")
    print(f"no cache                         {plain:7.2f} s  ({1e3 * plain / len(samples):6.1f} ms/image)")
    print(f"cold cache (extract + write)     {cold:7.2f} s  ({1e3 * cold / len(samples):6.1f} ms/image)")
    print(f"warm cache, gas -> {args.aggregation_gas:<13} {warm:7.2f} s  ({1e3 * warm / len(samples):6.1f} ms/image)")
    print(f"no cache, gas -> {args.aggregation_gas:<15} {fresh:7.2f} s")
    print(f"speed-up (no cache, new aggregation) / warm cache: {fresh / warm:.1f}x")
    print(f"write overhead cold / no cache: {cold / plain:.3f}")
    print(f"warm predictions identical to the uncached run: {same(warm_results, fresh_results)}")


if __name__ == "__main__":
    main()
