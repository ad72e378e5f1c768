"""What one browser's page shows (its `View`, kept per browser by Gradio): the shown result with the
settings that made it, and a result pinned for comparison; and the results' HTML, one result's
cards or, when a pinned result answers the same input with other settings, both side by side."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from html import escape

from refam.apps.serve.settings import Settings


@dataclass(frozen=True)
class Shown:
    """One run as the page shows it."""

    request: tuple  # what it answers: (the input's content digest, expressions, caption)
    settings: Settings  # the page's settings that made it
    cards: tuple[str, ...]  # one card's HTML per expression (`refam.apps.serve.cards`)
    summary: str  # the input, its caption, how many expressions (and frames) in how long
    downloads: tuple[str, ...] = ()
    clip: str | None = None  # a video's tracked masks as a clip the browser plays (WebM), a tile per expression
    # a user's correction points that made it, in click order: (expression index, x, y, label 1 "this" / 0 "not this")
    points: tuple[tuple[int, float, float, int], ...] = ()


@dataclass(frozen=True)
class View:
    """A browser's page: the result shown (None before the first) and the one pinned to compare."""

    shown: Shown | None = None
    pinned: Shown | None = None

    def showing(self, shown: Shown) -> "View":
        return replace(self, shown=shown)

    def pin(self) -> "View":
        return replace(self, pinned=self.shown)

    def unpin(self) -> "View":
        return replace(self, pinned=None)

    @property
    def comparing(self) -> bool:
        """A pinned result and the shown one answer the same input with other settings."""
        return (self.shown is not None and self.pinned is not None and self.pinned.request == self.shown.request
                and self.pinned.settings != self.shown.settings)


def settings_items(settings: Settings) -> dict[str, str]:
    """The page's settings as it names them (those the loaded pipeline has), name -> value."""
    if not settings.magnets:
        magnets = "off"
    else:
        magnets = f"on: {settings.magnet_words}" if settings.magnet_words.strip() else "on (as configured)"
    items = {"magnets": magnets}
    if settings.stop_words is not None:
        items["stop-word filter"] = "on" if settings.stop_words else "off"
    if settings.gas is not None:
        items["GAS"] = settings.gas
    if settings.first_block is not None and settings.last_block is not None:
        items["blocks"] = f"{settings.first_block}-{settings.last_block}"
    if settings.noise is not None:
        items["noise sigma"] = f"{settings.noise:g}"
    items["spatial bias"] = settings.spatial_bias
    return items


def settings_html(shown: Shown, title: str, other: Shown | None = None) -> str:
    """The settings that made `shown`, those that differ from `other`'s marked."""
    items, others = settings_items(shown.settings), settings_items(other.settings) if other else {}
    cells = "".join(f'<span class="refam-setting{" refam-differs" if other and others.get(k) != v else ""}">'
                    f"{escape(k)}: <b>{escape(v)}</b></span>" for k, v in items.items())
    return (f'<div class="refam-settings" data-settings="{escape(json.dumps(asdict(shown.settings)))}">'
            f'<span class="refam-title">{escape(title)}</span>{cells}'
            f'<span class="refam-summary">{escape(shown.summary)}</span></div>')


def results_html(view: View) -> str:
    """The shown result's cards under its settings; beside a pinned result when comparing."""
    shown, pinned = view.shown, view.pinned
    if shown is None:
        return ""
    if view.comparing:
        heads = [settings_html(pinned, "pinned", shown), settings_html(shown, "shown", pinned)]
        cells = heads + [card for pair in zip(pinned.cards, shown.cards) for card in pair]
        return '<div class="refam-results refam-compare">' + "".join(cells) + "</div>"
    note = ""
    if pinned is not None:
        note = ('<p class="refam-note">pinned: change a setting, and its result shows beside this one</p>'
                if pinned.request == shown.request else
                '<p class="refam-note">the pinned result answers another input (image, expressions or caption): '
                "pin this one to compare settings on it</p>")
    return ('<div class="refam-results">' + settings_html(shown, "settings of this result") + note
            + "".join(shown.cards) + "</div>")
