"""A model's no-referent flag: `no_referent.json` beside its weights, written by
`bench/no_referent.py --write-calibration`, read here (JSON only, every key the flag uses checked).

It names one statistic of `refam.referent.statistics`, the side absent referents score on, the
threshold chosen on calibration scenes, the flag's rates on held-out scenes, and the `model:` section
of the pipeline it was measured with. The flag applies only to that pipeline (the weights beside the
file, the same settings) with no caption, on images, and to expressions like those it was measured on
(every word known to the tokenizer, one content word at least: `refam.text.caveats` warns of the
others): any other call or expression gets no flag (None), not a flag whose rates were never
measured. A model without the file (the video model, a FLUX checkpoint) has no flag."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

from refam.embedded import resolve_embedded
from refam.errors import ConfigError
from refam.referent.operating_point import DIRECTIONS, fires
from refam.referent.statistics import STATISTICS

FILE = "no_referent.json"
# keys of a pipeline's section that change no map: where the weights are read from (the file lies
# beside them) and how they are held, the map cache, and the video key frame
UNMEASURED = {"map_cache", "key_frame"}
UNMEASURED_EXTRACTOR = {"pretrained", "offload", "local_files_only"}
REWRITE = "write it again with bench/no_referent.py --write-calibration, or remove the file to run without the flag"


@dataclass(frozen=True)
class NoReferentCalibration:
    """A no-referent flag at a fixed operating point (see the module docstring)."""

    path: Path
    statistic: str  # a name of `refam.referent.statistics.STATISTICS`
    direction: str  # "below" or "above": the side of `threshold` the flag fires on
    threshold: float
    recall: float  # held out: the share of expressions naming an absent object it flags
    false_positive_rate: float  # held out: the share of expressions naming a present object it flags
    scenes: str  # what the held-out scenes were, in words
    pipeline: dict  # the `model:` section it was measured with
    recall_by_kind: dict[str, float]  # held out, per kind of expression ("colour": 0.6)

    def applies(self, section: dict, caption: str) -> bool:
        """Whether a call of the pipeline whose section (with the call's settings) is `section`, on
        a sample conditioned on `caption`, is the pipeline the flag was measured on, without a caption."""
        return not caption and _measured(section) == _measured(self.pipeline)

    def fires(self, value: float) -> bool:
        return bool(fires(value, self.direction, self.threshold))

    def warning(self, value: float) -> str:
        """The sentence a flagged prediction carries: what fired, at what value, and how often the
        flag was right where it was measured."""
        side = "under" if self.direction == "below" else "over"
        return (f"may name nothing in the image: {STATISTICS[self.statistic]} is {value:.3g}, {side} the no-referent "
                f"flag's {self.threshold:.3g} (measured on {self.scenes}: the flag catches "
                f"{100 * self.recall:.0f} % of expressions naming an absent object, and fires on "
                f"{100 * self.false_positive_rate:.0f} % of those naming a present one)")

    def describe(self) -> str:
        """The flag in a line, for the model card."""
        kinds = ", ".join(f"{kind} {100 * recall:.0f} %" for kind, recall in self.recall_by_kind.items())
        return (f"fires when {self.statistic} ({STATISTICS[self.statistic]}) is {self.direction} {self.threshold:.4g}; on "
                f"{self.scenes} it catches {100 * self.recall:.1f} % of expressions naming an absent object"
                f"{f' (by what they name: {kinds})' if kinds else ''} with {100 * self.false_positive_rate:.1f} % "
                "false alarms on present ones; only for the settings it was measured with and no caption (else "
                f"no_referent is None); {self.path.name} beside the weights")


def _measured(section: dict) -> dict:
    """The part of a pipeline's section that changes its maps and masks, as JSON holds it."""
    part = {k: v for k, v in copy.deepcopy(section).items() if k not in UNMEASURED}
    extractor = part.get("extractor", {}).get("init_args", {})
    for name in UNMEASURED_EXTRACTOR:
        extractor.pop(name, None)
    return json.loads(json.dumps(part))


def _field(record: dict, path: Path, key: str, kind: type, what: str):
    """`record[key]` (a dotted key reaches into objects), refused in one line naming the file and key
    when it is missing or not `kind` (float: a finite number)."""
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"{path}: no key {key!r} ({what}); {REWRITE}")
        value = value[part]
    if kind is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        fits = isinstance(value, kind)
    if not fits:
        raise ConfigError(f"{path}: {key!r} must be {what}, got {value!r}; {REWRITE}")
    return value


def _share(record: dict, path: Path, key: str) -> float:
    value = _field(record, path, key, float, "a share between 0 and 1")
    if not 0 <= value <= 1:
        raise ConfigError(f"{path}: {key!r} must be a share between 0 and 1, got {value!r}; {REWRITE}")
    return float(value)


def _choice(record: dict, path: Path, key: str, choices) -> str:
    value = _field(record, path, key, str, f"one of {sorted(choices)}")
    if value not in choices:
        raise ConfigError(f"{path}: {key!r} must be one of {sorted(choices)}, got {value!r}; {REWRITE}")
    return value


def read_calibration(path: Path) -> NoReferentCalibration:
    """The calibration in `path`; a file that is not one raises ConfigError naming the file and key."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the no-referent calibration ({' '.join(str(err).split())}); "
                          f"{REWRITE}") from err
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: a no-referent calibration is a JSON object, not a {type(record).__name__}; "
                          f"{REWRITE}")
    kinds = _field(record, path, "held_out.per_kind", dict, "the held-out rates per kind of expression")
    return NoReferentCalibration(
        path, statistic=_choice(record, path, "statistic", STATISTICS), direction=_choice(record, path, "direction", DIRECTIONS),
        threshold=float(_field(record, path, "threshold", float, "a number")),
        recall=_share(record, path, "held_out.recall"),
        false_positive_rate=_share(record, path, "held_out.false_positive_rate"),
        scenes=_field(record, path, "held_out.scenes", str, "the held-out scenes, in words"),
        pipeline=_field(record, path, "pipeline", dict, "the model section it was measured with"),
        recall_by_kind={str(kind): _share(record, path, f"held_out.per_kind.{kind}.recall") for kind in kinds})


def model_folder(extractor) -> Path | None:
    """The folder of weights an extractor reads (its `pretrained`, `embedded:` resolved), if it is one."""
    pretrained = getattr(extractor, "pretrained", None)
    if getattr(extractor, "given_pipeline", False) or not isinstance(pretrained, str):
        return None
    folder = Path(resolve_embedded(pretrained))
    return folder if folder.is_dir() else None


def calibration_for(extractor) -> NoReferentCalibration | None:
    """The no-referent calibration beside the extractor's weights; None where there is none."""
    folder = model_folder(extractor)
    return read_calibration(folder / FILE) if folder is not None and (folder / FILE).is_file() else None
