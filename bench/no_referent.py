"""Can the embedded model tell that an expression names nothing in the image? A measurement.

    python bench/no_referent.py                       # 200 calibration + 200 held-out scenes, CPU
    python bench/no_referent.py --scenes 50 --save stats.json
    python bench/no_referent.py --model <a refam train-shapes output or snapshot>
    python bench/no_referent.py --write-calibration   # the flag, as no_referent.json beside the weights

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
its per-patch softmax over tokens P[t, patch] are taken (`refam.referent.statistics`, which the
pipeline's flag reads too) (heat = the mean of the kept tokens' P, the
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

Then the no-referent flag at a fixed operating point, chosen on calibration only
(`refam.referent.operating_point`): per statistic, the side absent referents score on (its AUROC)
and the threshold that flags the most absent expressions while flagging at most 5 % of present
ones; the statistic that flags the most there is the flag. Its held-out AUROC (on the flag's side),
recall (absent flagged), false-positive rate (present flagged) and precision are printed overall
and per kind, with the regression's at the same false-positive rate (a single statistic is easier
to explain: the regression would be preferred only with 0.05 more calibration recall).
`--write-calibration` writes it, with the splits' numbers, the scenes, the pipeline's `model:`
section and the command, as no_referent.json beside the model's weights
(`refam.referent.calibration` reads it there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refam.embedded import REFAM_SHAPES  # noqa: E402
from refam.referent.calibration import FILE  # noqa: E402
from refam.referent.operating_point import auroc as side_auroc, direction_of, fires, rates, threshold_at  # noqa: E402
from refam.referent.statistics import expression_statistics  # noqa: E402
from refam.shapes.absent import PARTS, absent_expressions  # noqa: E402
from refam.shapes.scenes import Scene  # noqa: E402
from refam.shapes.varied import make_varied_scene  # noqa: E402

SPLITS = {"calibration": 10000, "held-out": 20000}  # first index of each, in the varied "test" split
KINDS = ("colour+shape", "shape", "colour")
MAX_FALSE_POSITIVE_RATE = 0.05  # the flag's operating point: at most this share of present expressions flagged
CLEARLY_BETTER = 0.05  # more calibration recall at that point that would make the regression worth its opacity


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
            rows.append({"split": split, "scene": index, "text": text, "kind": kind, "absent": absent, "part": part,
                         **expression_statistics(maps, aggregation, k, masks[k])})
    return rows


def auroc(rows: list[dict], name: str) -> float:
    """The AUROC for absent of a statistic as it is (below 0.5: absent scores lower)."""
    return side_auroc([r[name] for r in rows], [r["absent"] for r in rows])


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


def regression(calibration: list[dict], names: list[str]):
    """Every statistic together: a logistic regression fitted on calibration (standardised
    statistics, a little L2), to see whether they add up to what none gives alone; returns the
    function that gives rows their logits."""

    def table(part: list[dict]) -> torch.Tensor:
        return torch.tensor([[r[n] for n in names] for r in part], dtype=torch.float64)

    x, y = table(calibration), torch.tensor([float(r["absent"]) for r in calibration], dtype=torch.float64)
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
    return lambda part: logits(table(part)).detach().numpy()


def flag_rates(rows: list[dict], scores: np.ndarray, direction: str, threshold: float, scenes: str) -> dict:
    """The flag's rates on a split (`refam.referent.operating_point.rates`), overall, per kind (its
    present and absent expressions) and, for absent colour-shape pairs, per part the scene holds."""
    absent = np.array([r["absent"] for r in rows])
    kinds = np.array([r["kind"] for r in rows])
    parts = np.array([r["part"] for r in rows])
    out = {"scenes": scenes, **rates(scores, absent, direction, threshold)}
    out["per_kind"] = {k: rates(scores[kinds == k], absent[kinds == k], direction, threshold) for k in KINDS}
    out["absent_colour_shape_recall_by_part"] = {
        part: float(fires(scores[parts == part], direction, threshold).mean()) for part in PARTS if (parts == part).any()}
    return out


def choose_flag(calibration: list[dict], names: list[str]) -> dict:
    """Per statistic, on calibration only: the side absent referents score on, the threshold that
    flags at most MAX_FALSE_POSITIVE_RATE of the present expressions, and the share of absent ones
    it flags there; the chosen statistic is the one that flags the most."""
    absent = [r["absent"] for r in calibration]
    candidates = {}
    for name in names:
        scores = [r[name] for r in calibration]
        direction = direction_of(scores, absent)
        threshold = threshold_at(scores, absent, direction, MAX_FALSE_POSITIVE_RATE)
        candidates[name] = {"direction": direction, "threshold": threshold,
                            "calibration_recall": rates(scores, absent, direction, threshold)["recall"]}
    return candidates


def report(rows: list[dict]) -> dict:
    """Print the tables; returns the flag's calibration record (`flag`)."""
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
    combined = regression(calibration, names)
    print(f"all statistics together (logistic regression fitted on calibration): held-out AUROC "
          f"{side_auroc(combined(held_out), [r['absent'] for r in held_out]):.3f}")
    return flag(calibration, held_out, names, combined)


def number(value: float | None) -> str:
    """A rate as the tables print it ("-" where it is undefined: no flag fired, or one class is missing)."""
    return "-" if value is None else f"{value:.3f}"


def flag(calibration: list[dict], held_out: list[dict], names: list[str], combined) -> dict:
    """The no-referent flag at its operating point (`choose_flag`), its rates on both splits, and
    the regression's at the same false-positive rate for comparison: the calibration record."""
    candidates = choose_flag(calibration, names)
    print(f"\nThe flag: at most {MAX_FALSE_POSITIVE_RATE:.0%} of present expressions flagged on calibration\n")
    print("| statistic | fires when | calibration recall | held-out recall | held-out false positives | held-out precision |")
    print("| --- " * 6 + "|")
    for name, c in sorted(candidates.items(), key=lambda item: -item[1]["calibration_recall"]):
        held = rates([r[name] for r in held_out], [r["absent"] for r in held_out], c["direction"], c["threshold"])
        print(f"| {name} | {c['direction']} {c['threshold']:.5g} | {c['calibration_recall']:.3f} | {held['recall']:.3f} "
              f"| {held['false_positive_rate']:.3f} | {number(held['precision'])} |")
    name = max(candidates, key=lambda n: candidates[n]["calibration_recall"])
    chosen = candidates[name]
    splits = {}
    for split, rows in (("calibration", calibration), ("held_out", held_out)):
        first = SPLITS["held-out" if split == "held_out" else split]
        scenes = f"{len({r['scene'] for r in rows})} {split.replace('_', '-')} shape scenes"
        splits[split] = flag_rates(rows, np.array([r[name] for r in rows]), chosen["direction"], chosen["threshold"],
                                   scenes) | {"scene_indices": [first, max(r["scene"] for r in rows)]}
    absent = [r["absent"] for r in calibration]
    logits = combined(calibration)
    cut = threshold_at(logits, absent, "above", MAX_FALSE_POSITIVE_RATE)
    together = {"calibration": rates(logits, absent, "above", cut),
                "held_out": rates(combined(held_out), [r["absent"] for r in held_out], "above", cut)}
    clearly = together["calibration"]["recall"] >= chosen["calibration_recall"] + CLEARLY_BETTER
    held = splits["held_out"]
    print(f"\nchosen: {name!r}, fires when {chosen['direction']} {chosen['threshold']:.5g}; held-out AUROC "
          f"{number(held['auroc'])}, recall {number(held['recall'])}, false positives "
          f"{number(held['false_positive_rate'])}, precision {number(held['precision'])}")
    for kind, r in held["per_kind"].items():
        print(f"  {kind}: recall {number(r['recall'])} ({r['absent']} absent), false positives "
              f"{number(r['false_positive_rate'])} ({r['present']} present), precision {number(r['precision'])}, "
              f"AUROC {number(r['auroc'])}")
    print(f"  absent colour+shape recall by what of the pair the scene holds: " + ", ".join(
        f"{part} {value:.3f}" for part, value in held["absent_colour_shape_recall_by_part"].items()))
    print(f"all statistics (logistic regression) at the same false-positive rate: calibration recall "
          f"{together['calibration']['recall']:.3f}, held-out recall {together['held_out']['recall']:.3f}, false "
          f"positives {together['held_out']['false_positive_rate']:.3f}: "
          + ("clearly better (a flag on it is not built: consider it)" if clearly else "not clearly better; the single "
             "statistic is the flag"))
    return {"statistic": name, "direction": chosen["direction"], "threshold": chosen["threshold"],
            "max_false_positive_rate": MAX_FALSE_POSITIVE_RATE, **splits, "logistic_regression": together,
            "candidates": candidates}


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
    parser.add_argument("--write-calibration", action="store_true",
                        help=f"write the flag as {FILE} beside the model's weights (refam/embedded/refam-shapes/ for "
                             "the embedded model), where the pipeline reads it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args.model)
    started = time.perf_counter()
    rows = [row for split in SPLITS for row in measure(model, split, args.scenes)]
    seconds = time.perf_counter() - started
    print(f"{len(rows)} expressions in {seconds:.0f} s "
          f"({args.model or 'refam-shapes'}, the embedded image pipeline, CPU, {args.threads} thread(s))\n")
    if args.save is not None:
        args.save.write_text(json.dumps(rows, indent=1))
    record = report(rows)
    if args.write_calibration:
        folder = args.model or REFAM_SHAPES
        record |= {"model": str(args.model or "embedded:refam-shapes"), "pipeline": model.pipeline.model_section(),
                   "command": " ".join(["python bench/no_referent.py", *(sys.argv[1:] if argv is None else argv)]),
                   "measured": f"{seconds:.0f} s on the CPU, {args.threads} thread(s), torch {torch.__version__}"}
        (folder / FILE).write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {folder / FILE}")


if __name__ == "__main__":
    main()
