"""`refam analyze`: the paper's diagnostic figures for one image and one expression.

    refam analyze --image photo.jpg --expression "the dog on the left" --output figures/

Writes into the output folder (with several --expression, into one sub-folder `<k>-<expression>`
per expression, k counting from 0):
- `token_maps.png`: each token's map (each patch's distribution over the expression's tokens) with
  the paper's magnets appended (top row) and without them (bottom row), as in the appendix figures;
  the first column is the heatmap with its argmax star; dropped tokens are titled in grey, global
  attention sinks in red.
- `text_attention.png`: the text-to-text attention each token receives, with global attention sinks
  (more than the aggregator's factor times the mean) in red, as in figure 1.
- `block_entropy.png`: per block, the mean and minimum entropy of the kept tokens' maps (figure 4).
  A token's map in one block is its head-averaged cross-attention logits over the image patches,
  softmaxed over the patches; its entropy is divided by log(patches), so 1 is uniform attention and
  0 is a single patch.
- `analysis.json`: the numbers behind the figures.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import torch

from refam.errors import ArgumentParser, reports_user_errors


def block_entropies(model, image, caption: str, expression: str) -> list[dict]:
    """Mean and minimum normalised spatial entropy of the kept tokens' maps, block by block."""
    settings, extractor = model.settings, model.pipeline.extractor
    magnets, overrides = settings.magnets, settings.extractor_overrides()
    text, magnet_start = magnets.augment(expression)
    rows = []
    for block in range(extractor.num_blocks):  # one block per call; the extractor's own setting untouched
        maps = extractor.extract(image, caption, [(text, magnet_start)], "image", magnet_vectors=magnets.vectors,
                                 **{**overrides, "blocks": [block]})
        kept = torch.tensor(magnets.keep(maps.tokens[0], expression)) & maps.valid[0]
        scores = maps.scores[0][kept].flatten(1)  # [kept tokens, patches]
        if maps.kind == "logits":
            spatial = scores.softmax(dim=1)
        else:
            spatial = scores / scores.sum(dim=1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)
        entropy = -(spatial * spatial.clamp(min=1e-12).log()).sum(dim=1) / math.log(scores.shape[1])
        rows.append({"block": block, "mean": float(entropy.mean()), "min": float(entropy.min())})
    return rows


def _without_magnets(magnets):
    """The paper's strategy with no magnets and the same token filters as `magnets`."""
    from refam.aggregators.magnets import AppendMagnets

    return AppendMagnets([], filter_stop_words=getattr(magnets, "filter_stop_words", True),
                         stop_words=getattr(magnets, "stop_words", None),
                         noun_phrase=getattr(magnets, "noun_phrase", None))


def text_attention_rows(prediction, factor: float) -> list[dict]:
    """Per real token: the text-to-text attention it receives and whether that makes it a global
    attention sink (more than `factor` times the expression's mean, as the aggregator finds them)."""
    mass = prediction.text_mass
    mean_mass = sum(mass) / len(mass)
    return [{"token": t, "mass": m, "sink": m > factor * mean_mass} for t, m in zip(prediction.tokens, mass)]


def analyze(model, image, expression: str, caption: str = "") -> dict:
    settings = model.settings
    with_magnets = model.segment(image, [expression], caption=caption)[0]
    without = replace(settings, magnets=_without_magnets(settings.magnets))  # this call's only
    without_magnets = model.segment(image, [expression], caption=caption, settings=without)[0]
    factor = getattr(settings.aggregator, "gas_factor", 10.0)
    return {
        "expression": expression,
        "caption": caption,
        "gas_factor": factor,
        "runs": {name: {"tokens": p.tokens, "kept_tokens": p.kept_tokens, "point": list(p.point),
                        "sinks": p.sinks}
                 for name, p in (("with magnets", with_magnets), ("without magnets", without_magnets))},
        "text_attention": text_attention_rows(with_magnets, factor),
        "block_entropy": block_entropies(model, image, caption, expression),
        "_predictions": {"with magnets": with_magnets, "without magnets": without_magnets},
    }


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def token_maps_figure(image, predictions: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refam.visualize import heatmap_image

    columns = 1 + max(len(p.tokens) for p in predictions.values())
    figure, axes = plt.subplots(len(predictions), columns, figsize=(1.6 * columns, 1.9 * len(predictions)), squeeze=False)
    for row, (name, prediction) in enumerate(predictions.items()):
        for ax in axes[row]:
            ax.axis("off")
        axes[row, 0].imshow(heatmap_image(prediction.heatmap, image.size, prediction.point))
        axes[row, 0].set_title(f"{name}\nheatmap", fontsize=8)
        kept = prediction.token_kept or [token in prediction.kept_tokens for token in prediction.tokens]
        sinks = prediction.token_sink or [False] * len(prediction.tokens)
        for column, (token, token_map) in enumerate(zip(prediction.tokens, prediction.token_maps), start=1):
            axes[row, column].imshow(token_map.numpy(), cmap="inferno")  # each on its own scale, as in the paper
            keep, sink = kept[column - 1], sinks[column - 1]
            note = "\n".join((["(dropped)"] if not keep else []) + (["(sink)"] if sink else []))
            axes[row, column].set_title(f"{token}\n{note}" if note else token, fontsize=8,
                                        color="red" if sink else ("black" if keep else "grey"))
    return _png(figure)


def text_attention_figure(rows: list[dict], factor: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows)), 3))
    ax.bar(range(len(rows)), [r["mass"] for r in rows], color=["red" if r["sink"] else "steelblue" for r in rows])
    mean = sum(r["mass"] for r in rows) / len(rows)
    ax.axhline(factor * mean, color="red", linestyle="--", linewidth=1, label=f"sink threshold ({factor:g} x mean)")
    ax.set_xticks(range(len(rows)), [r["token"] for r in rows], rotation=60, fontsize=8)
    ax.set_ylabel("text-to-text attention received")
    ax.legend(fontsize=8)
    return _png(figure)


def block_entropy_figure(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(5, 3))
    blocks = [r["block"] for r in rows]
    ax.plot(blocks, [r["mean"] for r in rows], marker="o", label="mean")
    ax.plot(blocks, [r["min"] for r in rows], marker="v", label="minimum")
    ax.set_xlabel("block")
    ax.set_ylabel("normalised entropy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _png(figure)


def write_analysis(result: dict, image, output: Path) -> None:
    from refam.io.files import save_json, write_atomic

    predictions = result.pop("_predictions")
    write_atomic(output / "token_maps.png", token_maps_figure(image, predictions))
    write_atomic(output / "text_attention.png", text_attention_figure(result["text_attention"], result["gas_factor"]))
    write_atomic(output / "block_entropy.png", block_entropy_figure(result["block_entropy"]))
    save_json(result, output / "analysis.json")


def output_folders(output: Path, expressions: list[str]) -> list[Path]:
    """Where each expression's analysis goes: the output folder itself for one expression, else a
    sub-folder `<k>-<expression>` each (named as `refam predict` names its files)."""
    from refam.io.names import slug

    if len(expressions) == 1:
        return [output]
    return [output / f"{k}-{slug(text)}" for k, text in enumerate(expressions)]


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    from refam.api import add_model_arguments

    parser = ArgumentParser(prog="refam analyze", description=__doc__)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--expression", action="append", required=True,
                        help="a referring expression (repeatable: one analysis each, in <output>/<k>-<expression>/)")
    parser.add_argument("--caption", default="")
    parser.add_argument("--output", type=Path, required=True)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    from refam.api import RefAM, as_image, expression_texts
    from refam.apps.predict import check_writable

    expression_texts(args.expression)  # the API's check, before anything loads
    image = as_image(args.image)
    check_writable(args.output)
    model = RefAM.load(args.config or args.model, device=args.device)
    for text, folder in zip(args.expression, output_folders(args.output, args.expression)):
        write_analysis(analyze(model, image, text, args.caption), image, folder)
        print(f"{folder}: token_maps.png, text_attention.png, block_entropy.png, analysis.json")
