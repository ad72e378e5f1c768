"""Can the embedded model tell that an expression names nothing in the image? A measurement.

    python bench/no_referent.py                       # 200 calibration + 200 held-out scenes, CPU
    python bench/no_referent.py --scenes 50 --save stats.json
    python bench/no_referent.py --model <a refam train-shapes output or snapshot>

Scenes are the project's own (`refam.shapes.varied`, the family refam-shapes is trained on) from
its "test" split at indices no run has used: training draws the "train" split, the monitor and
`refam.shapes.evaluate` test scenes 0-159; here calibration is test 10000.. and held-out test
20000... Each scene gets, per kind, one expression naming a present object (as the generator words
it, unique in the scene) and one naming an absent one in the same words:
  colour+shape  "the red circle" / a colour-shape pair no object has (its colour or shape may be
                there: reported apart)
  shape         "the circle" / a shape no object has
  colour        "the red object" / a colour no object has
Each runs through the embedded image pipeline (`RefAM.load()`: magnets, stop-word filter, flood
fill, no caption) as `RefAMPipeline.segment_sample` runs it, and per expression these statistics of
its per-patch softmax over tokens P[t, patch] are taken (heat = the mean of the kept tokens' P, the
heatmap before its min-max normalisation; rest = the magnets' and the end token's P summed):

  heat peak, heat peak / mean, heat entropy (normalised by log #patches), heat top-5 % share,
  rest at the peak, rest mean, kept mass at the peak, max kept-token P, min over kept tokens of
  their own peak, min over kept tokens of P at the heat peak, claimed share (the patches whose
  kept mass exceeds the rest's), its minimum over the kept tokens taken one by one, mask area
  (share of the image).

It prints each statistic's AUROC for "absent" (torchmetrics `binary_auroc`, absent = positive, the
statistic as the score: below 0.5 means absent scores lower) on calibration and held-out, overall
and per kind, with counts; then the statistic with the best calibration separation, its threshold
chosen on calibration (best accuracy), and its accuracy and AUROC on held-out; and the held-out
AUROC of all statistics combined by a logistic regression fitted on calibration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refam.shapes.absent import PARTS, absent_expressions  # noqa: E402
from refam.shapes.scenes import Scene  # noqa: E402
from refam.shapes.varied import make_varied_scene  # noqa: E402

SPLITS = {"calibration": 10000, "held-out": 20000}  # first index of each, in the varied "test" split
KINDS = ("colour+shape", "shape", "colour")


def expressions_for(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, bool, str]]:
    """(text, kind, absent, part) per kind: one present expression the generator makes, one absent
    one; `part` says what of an absent colour-shape pair is in the scene ("" for the others)."""
    out = []
    for kind in KINDS:
        present = [r.text for r in scene.referrals if r.kind == kind]
        if present:
            out.append((present[int(rng.integers(len(present)))], kind, False, ""))
    out += [(text, kind, True, part) for text, kind, part in absent_expressions(scene, rng)]
    return out


def statistics(probabilities: torch.Tensor, kept: torch.Tensor, rest: torch.Tensor, mask: np.ndarray) -> dict:
    """The candidate statistics of one expression: P [T, h, w], kept and rest [T] bool."""
    p = probabilities.flatten(1).double()  # [T, N]
    heat = p[kept].mean(dim=0)
    peak = int(heat.argmax())
    share = heat / heat.sum()
    rest_map = p[rest].sum(dim=0)
    top = max(1, round(0.05 * heat.numel()))
    return {
        "heat peak": float(heat[peak]),
        "heat peak / mean": float(heat[peak] / heat.mean()),
        "heat entropy": float(-(share * share.clamp(min=1e-12).log()).sum() / math.log(heat.numel())),
        "heat top-5% share": float(share.topk(top).values.sum()),
        "rest at peak": float(rest_map[peak]),
        "rest mean": float(rest_map.mean()),
        "kept mass at peak": float(p[kept][:, peak].sum()),
        "max kept-token P": float(p[kept].max()),
        "min kept-token peak": float(p[kept].max(dim=1).values.min()),
        "min kept-token P at peak": float(p[kept][:, peak].min()),
        "claimed share": float((p[kept].sum(dim=0) > rest_map).double().mean()),
        "min kept-token claimed share": float((p[kept] > rest_map).double().mean(dim=1).min()),
        "mask area": float(np.asarray(mask).mean()),
    }


def measure(model, split: str, scenes: int) -> list[dict]:
    """One row per expression: its split, scene, text, kind, absent, and the statistics."""
    from refam.prompts.point import argmax_points, upsample

    pipeline = model.pipeline
    settings = pipeline.settings
    rows = []
    for index in range(SPLITS[split], SPLITS[split] + scenes):
        scene = make_varied_scene("test", index)
        chosen = expressions_for(scene, np.random.default_rng([99, index]))
        texts = [text for text, *_ in chosen]
        augmented = [pipeline.check_expression(text) for text in texts]
        # the journey of RefAMPipeline.segment_sample (no spatial bias in the default), its parts kept
        maps = pipeline.extractor.extract(scene.image, "", augmented, f"no-referent-{index}",
                                          magnet_vectors=settings.magnets.vectors)
        keep = torch.tensor([settings.magnets.keep(tokens, text) for tokens, text in zip(maps.tokens, texts)])
        aggregation = settings.aggregator(maps, keep)
        width, height = scene.image.size
        points = argmax_points(aggregation.heatmaps, height, width)
        masks = pipeline.segmenter.segment(np.array(scene.image), points.numpy(),
                                           upsample(aggregation.heatmaps, height, width))
        for k, (text, kind, absent, part) in enumerate(chosen):
            tokens = maps.tokens[k]
            valid = maps.valid[k]
            rest = torch.tensor([v and (t.magnet or t.special) for t, v in zip(tokens, valid.tolist())])
            rows.append({"split": split, "scene": index, "text": text, "kind": kind, "absent": absent, "part": part,
                         **statistics(aggregation.probabilities[k], aggregation.kept[k], rest, masks[k])})
    return rows


def auroc(rows: list[dict], name: str) -> float:
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.tensor([r[name] for r in rows], dtype=torch.float64)
    labels = torch.tensor([int(r["absent"]) for r in rows])
    return float(binary_auroc(scores, labels))


def best_threshold(scores: np.ndarray, labels: np.ndarray, absent_above: bool) -> tuple[float, float]:
    """The cut with the best accuracy ("absent" on the side `absent_above` says) and that accuracy."""
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    best = (cuts[0], 0.0)
    for cut in cuts:
        accuracy = float(np.mean((scores > cut if absent_above else scores <= cut) == labels))
        if accuracy > best[1]:
            best = (float(cut), accuracy)
    return best


def combined_auroc(calibration: list[dict], held_out: list[dict], names: list[str]) -> float:
    """Held-out AUROC of every statistic together: a logistic regression fitted on calibration
    (standardised statistics, a little L2), to see whether they add up to what none gives alone."""
    from torchmetrics.functional.classification import binary_auroc

    def table(part: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor([[r[n] for n in names] for r in part], dtype=torch.float64),
                torch.tensor([float(r["absent"]) for r in part], dtype=torch.float64))

    x, y = table(calibration)
    mean, scale = x.mean(dim=0), x.std(dim=0) + 1e-9
    weights = torch.zeros(len(names) + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=500)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) / scale @ weights[:-1] + weights[-1]

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits(x), y) + 1e-3 * weights[:-1].square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    x_held, y_held = table(held_out)
    return float(binary_auroc(logits(x_held).detach(), y_held.long()))


def report(rows: list[dict]) -> None:
    names = [k for k in rows[0] if k not in ("split", "scene", "text", "kind", "absent", "part")]
    by = {split: [r for r in rows if r["split"] == split] for split in SPLITS}
    print("| split | scenes | present | absent | " + " | ".join(f"absent {k}" for k in KINDS) + " |")
    print("| --- " * (4 + len(KINDS)) + "|")
    for split, part in by.items():
        counts = [sum(r["absent"] and r["kind"] == k for r in part) for k in KINDS]
        print(f"| {split} | {len({r['scene'] for r in part})} | {sum(not r['absent'] for r in part)} "
              f"| {sum(r['absent'] for r in part)} | " + " | ".join(map(str, counts)) + " |")
    print("\nAUROC for absent (absent = positive; below 0.5: absent scores lower)\n")
    columns = [f"{split}" for split in SPLITS] + [f"held-out {k}" for k in KINDS]
    print("| statistic | " + " | ".join(columns) + " | mean present | mean absent |")
    print("| --- " * (3 + len(columns)) + "|")
    calibration, held_out = by["calibration"], by["held-out"]
    for name in names:
        cells = [auroc(by[split], name) for split in SPLITS]
        cells += [auroc([r for r in held_out if r["kind"] == k], name) for k in KINDS]
        present = np.mean([r[name] for r in held_out if not r["absent"]])
        absent = np.mean([r[name] for r in held_out if r["absent"]])
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {present:.4f} | {absent:.4f} |")
    pairs = [r for r in held_out if r["kind"] == "colour+shape" and not r["absent"]]
    parts = {part: [r for r in held_out if r["part"] == part] for part in PARTS}
    print("\nHeld-out colour+shape: present against absent pairs, by what of the absent pair the scene holds\n")
    print("| statistic | " + " | ".join(f"{part} ({len(rs)})" for part, rs in parts.items()) + " |")
    print("| --- " * (1 + len(parts)) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{auroc(pairs + rs, name):.3f}" for rs in parts.values()) + " |")
    best = max(names, key=lambda n: abs(auroc(calibration, n) - 0.5))
    above = auroc(calibration, best) > 0.5
    scores = np.array([r[best] for r in calibration])
    labels = np.array([r["absent"] for r in calibration])
    cut, accuracy = best_threshold(scores, labels, above)
    held_scores = np.array([r[best] for r in held_out])
    held_labels = np.array([r["absent"] for r in held_out])
    held_accuracy = float(np.mean((held_scores > cut if above else held_scores <= cut) == held_labels))
    separation = auroc(held_out, best) if above else 1 - auroc(held_out, best)
    print(f"\nbest on calibration: {best!r}, absent when {'>' if above else '<='} {cut:.5g} "
          f"(calibration accuracy {accuracy:.3f}); held-out: separation AUROC {separation:.3f}, "
          f"accuracy {held_accuracy:.3f} ({len(held_out)} expressions)")
    print(f"all statistics together (logistic regression fitted on calibration): held-out AUROC "
          f"{combined_auroc(calibration, held_out, names):.3f}")


def load(folder: Path | None):
    """The embedded image pipeline, on its own weights or on `folder`'s (same magnets, noise level,
    flood fill: only the weights differ, so that a fine-tuned model is measured as the default runs it)."""
    from refam.api import RefAM
    from refam.sections import build_pipeline, model_section

    if folder is None:
        return RefAM.load()
    if not (folder / "model_index.json").is_file():
        sys.exit(f"--model {folder}: not a diffusers folder (no model_index.json); give a refam train-shapes output")
    section = model_section(None)
    section["extractor"]["init_args"]["pretrained"] = str(folder.resolve())
    return RefAM(build_pipeline(section, origin=str(folder)), "cpu", configured=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=200, help="scenes per split (default 200)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None,
                        help="a refam-shapes folder (refam train-shapes' output or a snapshot) run in the embedded "
                             "pipeline's settings instead of the embedded weights")
    parser.add_argument("--save", type=Path, default=None, help="also write every expression's statistics (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args.model)
    started = time.perf_counter()
    rows = [row for split in SPLITS for row in measure(model, split, args.scenes)]
    print(f"{len(rows)} expressions in {time.perf_counter() - started:.0f} s "
          f"({args.model or 'refam-shapes'}, the embedded image pipeline, CPU, {args.threads} thread(s))\n")
    if args.save is not None:
        args.save.write_text(json.dumps(rows, indent=1))
    report(rows)


if __name__ == "__main__":
    main()
