"""One expression's result as a card of the page (HTML): its text, the mask outlined over the image
with the point, the heatmap over the image, and its tokens; a click on a token shows that token's
map over the image instead (the page's script swaps layers: every map is in the card). The token
maps share one colour scale, shown with its range under the map."""

from __future__ import annotations

from html import escape

import numpy as np

from refam.apps.serve.pictures import base_layer, colour_scale_css, map_layer, mask_layers, star_points

HEATMAP = "heatmap"


def token_label(token: str) -> str:
    """A token as the page shows it: the tokenizer's word-start mark dropped (alone, it stays)."""
    return token.replace("▁", "") or "▁"


def number(value: float) -> str:
    return f"{value:.3g}"


def _frame(image, stack: str, enlarged: bool) -> str:
    """The image (the card's `--refam-base`, embedded once for both pictures) with layers over it."""
    width, height = image.size
    return (f'<div class="refam-frame{" refam-enlarged" if enlarged else ""}" style="aspect-ratio: {width} / {height}">'
            f'<div class="refam-base"></div>{stack}</div>')


def user_points(prediction) -> list:
    """The points a user placed that made this mask (`refam.types.Point`, source "user")."""
    return [p for p in prediction.points if p.source == "user"]


def _marks(point, size, corrections=()) -> str:
    """The star at the model's point, and a user's points: a filled dot "this", a ringed cross "not this"."""
    width, height = size
    radius = max(width, height) / 60
    dots = "".join(f'<circle class="refam-point refam-{"positive" if p.label else "negative"}" cx="{p.x:g}" cy="{p.y:g}" '
                   f'r="{radius:.3g}"/>' for p in corrections)
    return (f'<svg class="refam-marks" viewBox="0 0 {width} {height}" preserveAspectRatio="none">'
            f'<polygon class="refam-star" points="{star_points(point, size)}"/>{dots}</svg>')


def _scale(low: float, high: float, what: str) -> str:
    return (f'<span class="refam-scale"><span class="refam-low">{number(low)}</span>'
            f'<span class="refam-bar" style="background: {colour_scale_css()}"></span>'
            f'<span class="refam-high">{number(high)}</span> <span class="refam-what">{escape(what)}</span></span>')


def token_states(prediction) -> list[str]:
    """Per token: kept (its map entered the heatmap), dropped, or sink."""
    kept = prediction.token_kept or [token in prediction.kept_tokens for token in prediction.tokens]
    sinks = prediction.token_sink or [False] * len(prediction.tokens)
    return ["sink" if sink else ("kept" if keep else "dropped") for keep, sink in zip(kept, sinks)]


def notes_html(entry: dict) -> str:
    """What the pipeline says about the expression beside its answer: whether the model's no-referent
    flag fired (a caution; its warning, among the others, gives the flag's measured rates) and its
    warnings (a list of lines); nothing when the entry carries neither."""
    notes = ""
    if entry.get("no_referent"):
        notes += ('<p class="refam-no-referent" role="note"><b>no referent?</b> this expression may name nothing in '
                  "the image: the model's no-referent flag fired (how often it is right: the warning below)</p>")
    if entry.get("warnings"):
        notes += '<ul class="refam-warnings">' + "".join(f"<li>{escape(str(w))}</li>" for w in entry["warnings"]) + "</ul>"
    return notes


def card_html(index: int, text: str, image, prediction, entry: dict) -> str:
    """The card of expression `index` (0-based): `image` is what its maps are over (a video's key
    frame), `entry` the run record's entry for it (point, tokens, and any warnings)."""
    base, enlarged = base_layer(image)
    outline, fill, colour = mask_layers(image, prediction.mask)
    corrections = user_points(prediction)
    marks = _marks(prediction.point, image.size, corrections)
    x, y = entry.get("point", prediction.point)
    frame = f" · key frame {prediction.frame}" if prediction.frame is not None else ""
    if corrections:
        positive = sum(p.label for p in corrections)
        frame += f" · your points: {positive} this, {len(corrections) - positive} not this"
    header = (f'<header><span class="refam-number">{index + 1}</span><h3 class="refam-expression">{escape(text)}</h3>'
              f'<span class="refam-facts">point ({x:g}, {y:g}) · mask {int(np.count_nonzero(prediction.mask)):,} px'
              f'{frame}</span></header>')
    mask_view = (f'<figure class="refam-mask-view">'
                 + _frame(image, f'<img class="refam-fill" alt="" src="{fill}"><img class="refam-outline" alt="" src="{outline}">'
                                 + marks, enlarged)
                 + f'<figcaption>mask (outline in <span class="refam-swatch" style="background: rgb{colour}"></span>'
                   'contrasting colour) and the point that prompted it; click to correct it</figcaption></figure>')
    heatmap = prediction.heatmap.float().numpy()
    layers = [f'<img class="refam-map" data-layer="{HEATMAP}" alt="" src="{map_layer(heatmap, 0.0, 1.0)}">']
    captions = [f'<figcaption data-layer="{HEATMAP}">heatmap '
                + _scale(0.0, 1.0, "min-max normalised") + "</figcaption>"]
    chips = [f'<button type="button" class="refam-token refam-on" data-layer="{HEATMAP}">heatmap</button>']
    if prediction.token_maps is not None and prediction.tokens:
        maps = prediction.token_maps.float().numpy()
        low, high = float(maps.min()), float(maps.max())  # one scale for all of this expression's tokens
        states = token_states(prediction)
        mass = np.asarray(prediction.text_mass or [0.0] * len(prediction.tokens), dtype=float)
        share = mass / mass.max() if mass.size and mass.max() > 0 else np.zeros_like(mass)
        for t, (token, values, state) in enumerate(zip(prediction.tokens, maps, states)):
            layer, label = f"token-{t}", escape(token_label(token))
            layers.append(f'<img class="refam-map" data-layer="{layer}" hidden alt="" src="{map_layer(values, low, high)}">')
            captions.append(f'<figcaption data-layer="{layer}" hidden>map of <b>{label}</b> ({state}) '
                            + _scale(low, high, f"one scale for this expression's {len(maps)} token maps") + "</figcaption>")
            received = f"; receives {mass[t]:.3f} of the text-to-text attention" if prediction.text_mass else ""
            chips.append(f'<button type="button" class="refam-token refam-{state}" data-layer="{layer}" '
                         f'title="{escape(token)}: {state}{received}">{label}'
                         f'<span class="refam-mass" style="width: {100 * share[t]:.0f}%"></span></button>')
    map_view = ('<figure class="refam-map-view">' + _frame(image, "".join(layers) + marks, enlarged)
                + "".join(captions) + "</figure>")
    legend = ('<p class="refam-legend">tokens (click one for its map over the image): kept, '
              '<span class="refam-dropped">dropped</span>, <span class="refam-sink">sink</span>; '
              'the bar under each: the text-to-text attention it receives</p>')
    return (f'<section class="refam-card" data-expression="{index}" style="--refam-base: url({base})">{header}{notes_html(entry)}'
            f'<div class="refam-pictures">{mask_view}{map_view}</div>'
            f'<div class="refam-tokens">{"".join(chips)}</div>{legend}</section>')
