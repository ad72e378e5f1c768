"""What a pipeline runs, told plainly: its model card.

    card = RefAM.load().card          # refam.card.ModelCard
    card.to_dict()                    # name, backbone, weights, what it was trained on, its words
    card.markdown()                   # a few lines a page shows

Everything is read from what the pipeline names, never downloaded: the extractor's class and
`pretrained`, the model folder's `model_index.json` (or the loaded pipeline) for the denoiser's
class, and for a model trained by `refam train-shapes` / `train-shapes-video` (a folder with a
`training.json`: the embedded refam-shapes and refam-shapes-video) its training record, the
palette its scenes were drawn from (`refam.embedded.palette`) and its tokenizer's vocabulary, the
only words it can read (any other becomes the unknown token).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refam.aggregators.magnets import PAPER_MAGNETS
from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.embedded import EMBEDDED_PREFIX, FOLDER as EMBEDDED_FOLDER
from refam.embedded.palette import COLOURS, SHAPES, SIZES
from refam.referent.calibration import calibration_for, model_folder
from refam.text.tokens import WORD_START_MARKER

SUPERVISED = ("supervised: besides the flow-matching loss, a grounding loss pulled the expression attention onto "
              "the referred shape while it trained, so its maps are taught, not emergent as a pretrained "
              "DiT's are (docs/refam-shapes.md)")
ZERO_SHOT = "zero-shot: the DiT was not trained to ground expressions; REFAM reads its attention as it is"
NO_FLAG = ("none: no calibration (no_referent.json) beside its weights, so no prediction is flagged as naming nothing "
           "(no_referent is None)")


@dataclass(frozen=True)
class ModelCard:
    """What is loaded. `colours`, `shapes`, `sizes` and `words` are filled for a model trained on
    refam's shape scenes (`words`: its whole vocabulary, stop words included); empty otherwise."""

    name: str
    extractor: str  # the extractor class, with its module
    transformer: str | None  # the denoiser's class (diffusers); None when the folder does not say
    segmenter: str
    weights: str  # where the weights came from, in words
    trained_on: str
    grounding: str
    card: str | None = None  # the model's own card: a hub address, a README, a docs page
    colours: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    # the no-referent flag (`refam.referent.calibration`): its statistic, threshold and measured rates, or NO_FLAG
    no_referent: str = NO_FLAG

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        """A short rendering: the name and backbone, then a line each for weights, training, grounding,
        the shapes vocabulary (content words only: stop words and magnets are filtered out anyway)."""
        backbone = f"{self.extractor.rsplit('.', 1)[-1]} on {self.transformer or 'a denoiser the folder does not name'}"
        lines = [f"**{self.name}** · {backbone} · segmenter {self.segmenter.rsplit('.', 1)[-1]}",
                 f"- weights: {self.weights}", f"- trained on: {self.trained_on}"]
        kind, _, why = self.grounding.partition(": ")
        lines.append(f"- grounding: **{kind}**: {why}" if why else f"- grounding: {kind}")
        if self.colours:
            lines.append(f"- colours: {', '.join(self.colours)} · shapes: {', '.join(self.shapes)} · "
                         f"sizes: {', '.join(self.sizes)}")
            content = [w for w in self.words if w not in PAPER_STOP_WORDS and w not in PAPER_MAGNETS]
            lines.append(f"- words it knows ({len(self.words)} with stop words): {', '.join(content)}; any other word "
                         "is unknown to it")
        lines.append(f"- no-referent flag: {self.no_referent}")
        if self.card:
            lines.append(f"- card: {self.card}")
        return "\n".join(lines)


def _class_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _transformer(extractor, folder: Path | None) -> str | None:
    pipe = getattr(extractor, "pipe", None)
    if pipe is not None and getattr(pipe, "transformer", None) is not None:
        return type(pipe.transformer).__name__
    index = folder / "model_index.json" if folder is not None else None
    if index is not None and index.is_file():
        entry = json.loads(index.read_text(encoding="utf-8")).get("transformer")
        return entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    return None


def flow_steps(record: dict) -> int | str:
    """A run's flow steps, with those of the runs it continued: `resumed_from` (the snapshot's record)
    or `init_from` (the record of the model every part started from)."""
    steps, previous = record.get("flow_steps"), record.get("resumed_from")
    if previous is None and isinstance(record.get("init_from"), dict):
        previous = record["init_from"].get("record")
    if not isinstance(steps, int):
        return "?"
    earlier = flow_steps(previous) if isinstance(previous, dict) and "flow_steps" in previous else 0
    return steps + earlier if isinstance(earlier, int) else "?"


def _trained_on(record: dict) -> str:
    video = "training_clips" in record
    if video:
        data = f"{record['training_clips']} clips of moving coloured shapes (refam.shapes)"
    else:
        family = record.get("family", "fixed")
        data = f"{record.get('training_scenes', '?')} procedural scenes of coloured shapes ({family} family of refam.shapes)"
    steps = (f"{flow_steps(record)} flow-matching steps of {record.get('batch_size', '?')} "
             f"{'clips' if video else 'scenes'}")
    ground = record.get("ground_weight", 0.0)
    loss = f" plus a grounding loss (weight {ground:g})" if ground else ", no grounding loss"
    machine = f", on {record['machine']}" if record.get("machine") else ""
    return f"{data}; {steps}{loss}{machine}"


def _words(extractor, folder: Path) -> list[str]:
    """The words the expression tokenizer knows: its word-start pieces ("▁red" -> "red")."""
    name = getattr(extractor, "reader_components", ("tokenizer", "text_encoder"))[0]
    pipe = getattr(extractor, "pipe", None)
    tokenizer = getattr(pipe, name, None) if pipe is not None else None
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / name)
    pieces = tokenizer.get_vocab()
    return sorted(p[1:] for p in pieces if p.startswith(WORD_START_MARKER) and len(p) > 1)


def read_training_record(path: Path) -> dict | None:
    """A `refam train-shapes` / `train-shapes-video` record; None where there is none (or none that reads as one)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def model_card(pipeline) -> ModelCard:
    """The card of a `RefAMPipeline` (loaded or not: a loaded one answers from memory)."""
    extractor = pipeline.extractor
    pretrained = getattr(extractor, "pretrained", None)
    calibration = calibration_for(extractor)
    base = {"extractor": _class_name(extractor), "segmenter": _class_name(pipeline.segmenter),
            "no_referent": calibration.describe() if calibration is not None else NO_FLAG}
    if getattr(extractor, "given_pipeline", False) or not isinstance(pretrained, str):
        pipe = getattr(extractor, "pipe", None)
        return ModelCard(name=type(pipe).__name__ if pipe is not None else type(extractor).__name__,
                         transformer=_transformer(extractor, None), weights="a pipeline handed over in memory "
                         "(use_pipeline), not named by a path", trained_on="not known to refam", grounding=ZERO_SHOT,
                         **base)
    folder = model_folder(extractor)
    if folder is None:  # a hub id: its own card says what it is
        return ModelCard(name=pretrained, transformer=_transformer(extractor, None),
                         weights=f"the Hugging Face hub: {pretrained}", trained_on="see its model card",
                         grounding=ZERO_SHOT, card=f"https://huggingface.co/{pretrained}", **base)
    embedded = pretrained.startswith(EMBEDDED_PREFIX) or folder.resolve().parent == EMBEDDED_FOLDER
    weights = (f"shipped in the refam package (embedded:{folder.name})" if embedded else f"the folder {folder}")
    record = read_training_record(folder / "training.json")
    if record is None:
        readme = folder / "README.md"
        return ModelCard(name=folder.name, transformer=_transformer(extractor, folder), weights=weights,
                         trained_on="see its model card" if readme.is_file() else "not recorded in its folder",
                         grounding=ZERO_SHOT, card=str(readme) if readme.is_file() else None, **base)
    supervised = bool(record.get("ground_weight", 0.0))
    return ModelCard(name=folder.name, transformer=_transformer(extractor, folder), weights=weights,
                     trained_on=_trained_on(record),
                     grounding=SUPERVISED if supervised else "emergent: trained with the flow-matching loss only",
                     card="docs/refam-shapes.md in the refam repository", colours=list(COLOURS), shapes=list(SHAPES),
                     sizes=list(SIZES), words=_words(extractor, folder), **base)
