"""The paper's ablation tables as data: each row is a set of config overrides on a base benchmark config.

    refam ablate --table 6                              # every row of Table 6, printed in the paper's layout
    refam ablate --table 4 --base configs/demo.yaml     # the same rows on another benchmark
    refam ablate --write-configs configs/ablations      # (re)write one complete YAML per row

A row file in `configs/ablations/` is the base config with the row's overrides merged in, so
`refam test --config configs/ablations/<row>.yaml` runs that row alone. This module is the one
place that says what each row changes; the files are generated from it (a test keeps them equal).

Merging follows jsonargparse's rule for components: an override naming another `class_path`
replaces the component; otherwise its `init_args` are merged key by key into the base's.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from refam.aggregators.magnets import PAPER_MAGNETS, PAPER_STOP_WORD_MAGNETS
from refam.errors import ArgumentParser, ConfigError, MissingInputError, parser_error_line, reports_user_errors

PARSER = {"class_path": "refam.text.parsing.ExpressionParser"}
SPATIAL_BIAS = [{"class_path": "refam.aggregators.spatial.DirectionPrior"},
                {"class_path": "refam.aggregators.spatial.RelationPrior"}]
REFCOCO_FAMILY = ("configs/refcoco.yaml", "configs/refcoco+.yaml", "configs/refcocog.yaml")
VIDEO_TABLE_BASE = ("configs/davis.yaml",)


@dataclass(frozen=True)
class Row:
    slug: str  # file name: configs/ablations/table<N>-<slug>.yaml
    cells: tuple[str, ...]  # the row's label cells, as printed in the paper
    overrides: dict = field(default_factory=dict)
    group: str | None = None  # rows sharing a group (the paper's "x5" draws) print as mean ± std


@dataclass(frozen=True)
class Table:
    number: int
    title: str
    label_columns: tuple[str, ...]
    rows: tuple[Row, ...]
    base: tuple[str, ...]  # config files; several are joined (their datasets run in one test)
    metrics: tuple[str, ...]  # the columns printed per dataset
    paper_benchmark: str

    def row(self, slug: str) -> Row:
        for row in self.rows:
            if row.slug == slug:
                return row
        raise ConfigError(f"table {self.number} has no row {slug!r}; rows: {', '.join(r.slug for r in self.rows)}")


def _model(**parts) -> dict:
    return {"model": parts}


def _components(am: bool, np: bool, sb: bool) -> dict:
    magnets = {"init_args": {"magnets": list(PAPER_MAGNETS) if am else [], "noun_phrase": PARSER if np else None}}
    return _model(magnets=magnets, spatial_bias=copy.deepcopy(SPATIAL_BIAS) if sb else None)


def _tick(flag: bool) -> str:
    return "✓" if flag else "-"


COMPONENT_ROWS = ((True, True, True), (False, True, True), (True, True, False), (False, True, False),
                  (True, False, False), (False, False, False))  # Tables 4 and 6, in the paper's order
INVERSION = {"class_path": "refam.extractors.trajectory.RFInversion",
             "init_args": {"steps": 28, "gamma": 0.5, "eta": 0.9, "eta_start": 0.0, "eta_stop": 0.25}}
# the paper says SAM2-S and SAM2-H; SAM2 ships tiny, small, base+ and large, so "huge" is hiera_l
SAM2_SIZES = {"small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "checkpoints/sam2.1_hiera_small.pt"),
              "huge": ("configs/sam2.1/sam2.1_hiera_l.yaml", "checkpoints/sam2.1_hiera_large.pt")}
VIDEO_METRICS = ("J&F", "J", "F", "PA", "mIoU", "oIoU")  # whichever the base's datasets report


def _component_rows() -> tuple[Row, ...]:
    return tuple(
        Row("-".join(name if on else f"no-{name}" for name, on in zip(("am", "np", "sb"), flags)),
            tuple(_tick(f) for f in flags), _components(*flags))
        for flags in COMPONENT_ROWS
    )


def _magnet_rows() -> tuple[Row, ...]:
    rows = [Row("stop-words-colour", ("stop words + color",), _model(magnets={
                "class_path": "refam.aggregators.magnets.AppendMagnets", "init_args": {"magnets": list(PAPER_MAGNETS)}})),
            Row("stop-words", ("stop words",), _model(magnets={
                "class_path": "refam.aggregators.magnets.AppendMagnets",
                "init_args": {"magnets": list(PAPER_STOP_WORD_MAGNETS)}}))]
    for kind, class_name in (("random-stop-words", "RandomStopWordMagnets"), ("random-vectors", "RandomVectorMagnets")):
        label = kind.replace("-", " ") + " (5x)"
        rows += [Row(f"{kind}-seed{seed}", (label,), _model(magnets={
                     "class_path": f"refam.aggregators.magnets.{class_name}", "init_args": {"count": 4, "seed": seed}}),
                     group=kind) for seed in range(5)]
    rows.append(Row("none", ("none",), _model(magnets={
        "class_path": "refam.aggregators.magnets.AppendMagnets", "init_args": {"magnets": []}})))
    return tuple(rows)


def _trajectory_rows() -> tuple[Row, ...]:
    noise = {"class_path": "refam.extractors.trajectory.NoiseAt", "init_args": {"sigma": 0.75}}
    return (Row("refam", ("REFAM",), _model(extractor={"init_args": {"trajectory": noise}})),
            Row("refam-inversion", ("REFAM + Inversion",),
                _model(extractor={"init_args": {"trajectory": copy.deepcopy(INVERSION)}})))


TABLES: dict[int, Table] = {t.number: t for t in (
    Table(1, "RVOS performance dependence on % of filtered transformer blocks", ("Filtered Blocks",),
          tuple(Row(f"filtered-{p}", (f"{p} %",), _model(extractor={"init_args": {"blocks": p / 100 if p else None}}))
                for p in (80, 70, 60, 0)),
          VIDEO_TABLE_BASE, VIDEO_METRICS, "Ref-DAVIS17"),
    Table(4, "Influence of the components", ("AM", "NP", "SB"), _component_rows(), VIDEO_TABLE_BASE, VIDEO_METRICS,
          "Ref-DAVIS17"),
    Table(5, "Influence of different AM", ("AM",), _magnet_rows(), VIDEO_TABLE_BASE, VIDEO_METRICS, "Ref-DAVIS17"),
    Table(6, "Ablation on spatial bias and noun phrase encoding (oIoU)", ("AM", "NP", "SB"), _component_rows(),
          REFCOCO_FAMILY, ("oIoU",), "RefCOCO, RefCOCO+, RefCOCOg"),
    Table(7, "Zero-shot referring segmentation with and without inversion", ("Method",), _trajectory_rows(),
          REFCOCO_FAMILY, ("oIoU", "mIoU"), "RefCOCO, RefCOCO+, RefCOCOg"),
    Table(8, "Ablations of representation space", ("Space",),
          (Row("attention-output", ("Attention Output",),
               _model(extractor={"init_args": {"representation": "attention_output"}})),
           Row("cross-attention", ("Cross Attention",),
               _model(extractor={"init_args": {"representation": "cross_attention"}}))),
          VIDEO_TABLE_BASE, VIDEO_METRICS, "Ref-DAVIS17"),
    Table(9, "Ablations of text conditioning", ("text condition",),
          (Row("empty", ("empty",), _model(text_condition="empty")),
           Row("caption", ("caption",), _model(text_condition="caption"))),
          VIDEO_TABLE_BASE, VIDEO_METRICS, "Ref-DAVIS17"),
    Table(10, "Influence of size of SAM on RVOS", ("size of SAM",),
          tuple(Row(size, (size,), _model(segmenter={"init_args": {"config": cfg, "checkpoint": ckpt}}))
                for size, (cfg, ckpt) in SAM2_SIZES.items()),
          VIDEO_TABLE_BASE, VIDEO_METRICS, "Ref-DAVIS17"),
    Table(11, "Comparison to ConceptAttention on image segmentation", ("Method",), _trajectory_rows(),
          ("configs/semseg.yaml",), ("Acc", "mIoU", "mAP"), "ImageNet-Segmentation, PascalVOC (single class)"),
)}


# Settings the paper leaves ambiguous, shipped as configs beside the tables: name -> (base, row).
READINGS: dict[str, tuple[tuple[str, ...], Row]] = {
    # "timestep 990" read in FLUX's convention (sigma = 0.99, nearly pure noise) instead of Mochi's
    "video-sigma-0.99": (("configs/davis.yaml",), Row("video-sigma-0.99", ("sigma 0.99",),
                                                      _model(extractor={"init_args": {"trajectory": {
                                                          "class_path": "refam.extractors.trajectory.NoiseAt",
                                                          "init_args": {"sigma": 0.99}}}}))),
}


# ---------------------------------------------------------------------------------------- configs
def merge(base, override):
    """`override` onto `base` (jsonargparse's rule for components; see the module docstring)."""
    if isinstance(base, dict) and isinstance(override, dict):
        if "class_path" in override and base.get("class_path") not in (None, override["class_path"]):
            return copy.deepcopy(override)
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def _read_yaml(path: Path, what: str) -> object:
    if not path.is_file():
        raise MissingInputError(f"{path}: no such config file ({what}); give an existing config with --base")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        reason = (f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"  # type: ignore[union-attr]
                  if mark is not None and getattr(err, "problem", None) else " ".join(str(err).split()))
        raise ConfigError(f"{path}: not a readable YAML config ({what}): {reason}") from err


def load_config(path: str | Path) -> dict:
    """A config with its `model: parts/x.yaml`-style includes read in (paths relative to the file)."""
    path = Path(path)
    config = _read_yaml(path, "the ablation's base") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (model:, data:, trainer:), "
                          f"not a {type(config).__name__}; give a config such as configs/demo.yaml as --base")
    for key, value in list(config.items()):
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            config[key] = _read_yaml(path.parent / value, f"the `{key}:` section of {path}")
    data = config.get("data") or {}
    if not isinstance(data, dict) or not isinstance(data.get("datasets", []), (list, dict)):
        raise ConfigError(f"{path}: `data:` must be a mapping whose `datasets:` is a dataset or a list of them")
    return config


def join_bases(paths: tuple[str, ...] | list[str]) -> dict:
    """The first config, with the datasets of every config run in one test."""
    configs = [load_config(p) for p in paths]
    joined = copy.deepcopy(configs[0])
    datasets = []
    for config in configs:
        found = (config.get("data") or {}).get("datasets", [])
        datasets += found if isinstance(found, list) else [found]
    joined.setdefault("data", {})["datasets"] = datasets
    return joined


def row_config(table: Table, row: Row, bases: tuple[str, ...] | list[str] | None = None,
               save_dir: str | None = None) -> dict:
    config = merge(join_bases(bases or table.base), row.overrides)
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": save_dir or f"outputs/ablations/table{table.number}-{row.slug}"}}
    config.setdefault("trainer", {})["logger"] = logger
    return config


def row_file_text(table: Table, row: Row) -> str:
    header = (
        f"# Table {table.number}: {table.title}; row \"{' | '.join(row.cells)}\" (paper: {table.paper_benchmark}).\n"
        f"# Generated by `refam ablate --write-configs configs/ablations` from refam/evaluation/ablations.py; edit there.\n"
        f"# Base: {', '.join(table.base)}. Run: refam test --config configs/ablations/table{table.number}-{row.slug}.yaml\n"
    )
    return header + yaml.safe_dump(row_config(table, row), sort_keys=False, allow_unicode=True, width=110)


def reading_file_text(name: str) -> str:
    base, row = READINGS[name]
    config = merge(join_bases(base), row.overrides)
    config.setdefault("trainer", {})["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                  "init_args": {"save_dir": f"outputs/ablations/{name}"}}
    header = (f"# {name}: {', '.join(base)} with {row.overrides} (a reading of a setting the paper leaves open).\n"
              "# Generated by `refam ablate --write-configs configs/ablations` from refam/evaluation/ablations.py; edit there.\n")
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=110)


def write_configs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for table in TABLES.values():
        for row in table.rows:
            path = folder / f"table{table.number}-{row.slug}.yaml"
            path.write_text(row_file_text(table, row))
            written.append(path)
    for name in READINGS:
        path = folder / f"{name}.yaml"
        path.write_text(reading_file_text(name))
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------- running
def run_row(config: dict, path: Path, extra: list[str], records: Path | None = None) -> dict[str, float]:
    """One `refam test` on the merged config; returns the logged metrics ("<dataset>/<metric>").
    `records`: where the per-expression records go (see `ExpressionRecords`)."""
    from refam.evaluation.lightning_cli import run_cli

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    where = ["--records.folder", str(records)] if records is not None else []
    from jsonargparse import ArgumentError

    try:
        cli = run_cli(["test", "--config", str(path), *where, *extra])
    except ArgumentError as err:  # an option given after the table's: the parser's one useful line
        raise ConfigError(parser_error_line(str(err), "ablate")) from err
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}


def expression_kinds(config: dict) -> dict[str, str]:
    """Expression id -> `kind` for manifest datasets whose expressions carry one (refam-shapes does)."""
    import json

    kinds = {}
    datasets = config.get("data", {}).get("datasets", [])
    for dataset in datasets if isinstance(datasets, list) else [datasets]:
        if not str(dataset.get("class_path", "")).endswith("ManifestDataset"):
            continue
        manifest = Path(dataset["init_args"]["path"])
        lines = manifest.read_text().splitlines() if manifest.suffix == ".jsonl" else [manifest.read_text()]
        for line in filter(str.strip, lines):
            records = json.loads(line)
            for record in records if isinstance(records, list) else [records]:
                for expression in record.get("expressions", []):
                    if isinstance(expression, dict) and "id" in expression and "kind" in expression:
                        kinds[expression["id"]] = expression["kind"]
    return kinds


def point_accuracy_by_kind(records: Path, kinds: dict[str, str]) -> dict[str, tuple[float, int]]:
    """PA per expression kind from a run's `ExpressionRecords` files."""
    import json

    hits: dict[str, list[bool]] = {}
    for file in sorted(records.rglob("*.jsonl")):
        for line in filter(str.strip, file.read_text().splitlines()):
            record = json.loads(line)
            if record["expression_id"] in kinds and record["point_hit"] is not None:
                hits.setdefault(kinds[record["expression_id"]], []).append(bool(record["point_hit"]))
    return {kind: (100.0 * sum(v) / len(v), len(v)) for kind, v in sorted(hits.items())}


def format_kinds(table: Table, by_kind: dict[str, dict[str, tuple[float, int]]]) -> str:
    """PA per expression kind, one column per row (grouped rows as their mean)."""
    columns, seen = [], set()
    for row in table.rows:
        if row.slug in by_kind and (row.group is None or row.group not in seen):
            members = [r.slug for r in table.rows if r.group == row.group and r.slug in by_kind] if row.group else [row.slug]
            columns.append((" ".join(row.cells), members))
            seen.add(row.group)
    kinds = sorted({k for values in by_kind.values() for k in values})
    lines = ["| kind | n | " + " | ".join(name for name, _ in columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for kind in kinds:
        n = next(by_kind[m][kind][1] for _, members in columns for m in members if kind in by_kind[m])
        cells = [statistics.mean(by_kind[m][kind][0] for m in members if kind in by_kind[m]) for _, members in columns]
        lines.append(f"| {kind} | {n} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def format_table(table: Table, results: dict[str, dict[str, float]]) -> str:
    """Markdown in the paper's layout: label cells, then each dataset's metrics; grouped rows as mean ± std."""
    # a metric's key is "<dataset>/<metric>", the dataset itself maybe "<benchmark>/<split>" (ref_davis17/valid)
    datasets = list(dict.fromkeys(k.rsplit("/", 1)[0] for values in results.values() for k in values if "/" in k))
    columns = [(d, m) for d in datasets for m in table.metrics if any(f"{d}/{m}" in v for v in results.values())]
    head = list(table.label_columns) + [f"{d} {m}" for d, m in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    printed = set()
    for row in table.rows:
        if row.slug not in results or (row.group is not None and row.group in printed):
            continue
        members = [r for r in table.rows if r.group == row.group and r.slug in results] if row.group else [row]
        if row.group is not None:
            printed.add(row.group)
        cells = []
        for d, m in columns:
            values = [results[r.slug].get(f"{d}/{m}") for r in members]
            values = [v for v in values if v is not None]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.1f}")
            else:
                cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
        lines.append("| " + " | ".join(list(row.cells) + cells) + " |")
    return "\n".join(lines)


def _writable_folder(folder: Path, flag: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{flag} {folder}: cannot create this folder ({err.strerror or err}); choose another") from err


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="refam ablate", description=__doc__)
    parser.add_argument("--table", type=int, choices=sorted(TABLES), help="which of the paper's tables to run")
    parser.add_argument("--base", nargs="+", help="base config(s) instead of the table's benchmark")
    parser.add_argument("--rows", help="comma-separated row slugs (default: all)")
    parser.add_argument("--output", type=Path, default=Path("outputs/ablations"),
                        help="where row configs, logs and table.md go")
    parser.add_argument("--write-configs", type=Path, metavar="FOLDER", help="write one YAML per row of every table")
    args, extra = parser.parse_known_args(argv)
    if args.write_configs:
        _writable_folder(args.write_configs, "--write-configs")
        for path in write_configs(args.write_configs):
            print(path)
        return
    if args.table is None:
        parser.error("give --table N (or --write-configs FOLDER)")
    table = TABLES[args.table]
    rows = [table.row(s.strip()) for s in args.rows.split(",")] if args.rows else list(table.rows)
    join_bases(args.base or table.base)  # every base read and checked before the first row runs
    _writable_folder(args.output, "--output")
    folder = args.output / f"table{table.number}"
    _writable_folder(folder, "--output")
    results, by_kind = {}, {}
    for row in rows:
        save_dir = folder / row.slug
        config = row_config(table, row, args.base, save_dir=str(save_dir))
        results[row.slug] = run_row(config, folder / f"{row.slug}.yaml", extra, records=save_dir / "records")
        kinds = expression_kinds(config)
        if kinds:
            by_kind[row.slug] = point_accuracy_by_kind(save_dir / "records", kinds)
        print(f"table {table.number} row {row.slug}: {results[row.slug]}", flush=True)
    text = f"Table {table.number}: {table.title}\n\n{format_table(table, results)}\n"
    if by_kind:
        text += f"\nPA by expression kind\n\n{format_kinds(table, by_kind)}\n"
    (folder / "table.md").write_text(text)
    print(text)
