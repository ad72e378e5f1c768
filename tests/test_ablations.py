"""The paper's ablation tables as configs: rows, merging, the committed files, the runner."""

from pathlib import Path

import pytest
import yaml

from refam.evaluation.ablations import READINGS, TABLES, format_table, merge, reading_file_text, row_config, row_file_text

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs/ablations"


def test_every_table_has_the_papers_rows():
    counts = {number: len(table.rows) for number, table in TABLES.items()}
    # Table 5: colour + stop words, stop words, random stop words x5, random vectors x5, none
    assert counts == {1: 4, 4: 6, 5: 13, 6: 6, 7: 2, 8: 2, 9: 2, 10: 2, 11: 2}
    assert [r.cells for r in TABLES[4].rows] == [r.cells for r in TABLES[6].rows] == [
        ("✓", "✓", "✓"), ("-", "✓", "✓"), ("✓", "✓", "-"), ("-", "✓", "-"), ("✓", "-", "-"), ("-", "-", "-")]


def test_merge_follows_jsonargparse_for_components():
    base = {"model": {"magnets": {"class_path": "A", "init_args": {"magnets": ["x"], "filter_stop_words": True}},
                      "extractor": {"class_path": "F", "init_args": {"blocks": None, "seed": 0}}}}
    same_class = merge(base, {"model": {"magnets": {"init_args": {"magnets": []}}}})
    assert same_class["model"]["magnets"] == {"class_path": "A", "init_args": {"magnets": [], "filter_stop_words": True}}
    other_class = merge(base, {"model": {"magnets": {"class_path": "B", "init_args": {"seed": 3}}}})
    assert other_class["model"]["magnets"] == {"class_path": "B", "init_args": {"seed": 3}}
    nested = merge(base, {"model": {"extractor": {"init_args": {"blocks": 0.6}}}})
    assert nested["model"]["extractor"]["init_args"] == {"blocks": 0.6, "seed": 0}
    assert base["model"]["magnets"]["init_args"]["magnets"] == ["x"]  # the base is not modified


def test_committed_row_files_are_the_generated_ones():
    expected = {f"table{t.number}-{r.slug}.yaml": row_file_text(t, r) for t in TABLES.values() for r in t.rows}
    expected |= {f"{name}.yaml": reading_file_text(name) for name in READINGS}
    committed = {p.name: p.read_text() for p in ABLATIONS.glob("*.yaml")}
    assert sorted(committed) == sorted(expected), "run `refam ablate --write-configs configs/ablations`"
    stale = [name for name in expected if committed[name] != expected[name]]
    assert not stale, f"stale row files {stale}: run `refam ablate --write-configs configs/ablations`"


def test_rows_change_only_what_the_table_varies():
    table4 = TABLES[4]
    full, bare = (row_config(table4, table4.row(s)) for s in ("am-np-sb", "no-am-no-np-no-sb"))
    assert full["data"] == bare["data"] and full["model"]["extractor"] == bare["model"]["extractor"]
    assert full["model"]["magnets"]["init_args"]["magnets"] == ["_", "with", "to", "and", "pink"]
    assert bare["model"]["magnets"]["init_args"]["magnets"] == []
    assert [b["class_path"].rsplit(".", 1)[1] for b in full["model"]["spatial_bias"]] == ["DirectionPrior", "RelationPrior"]
    assert bare["model"]["spatial_bias"] is None
    table6 = row_config(TABLES[6], TABLES[6].rows[0])
    names = [(d["init_args"]["dataset"], d["init_args"]["split"]) for d in table6["data"]["datasets"]]
    assert names == [("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"), ("refcoco+", "val"),
                     ("refcoco+", "testA"), ("refcoco+", "testB"), ("refcocog", "val"), ("refcocog", "test")]
    assert row_config(TABLES[1], TABLES[1].row("filtered-60"))["model"]["extractor"]["init_args"]["blocks"] == 0.6
    assert row_config(TABLES[9], TABLES[9].row("empty"))["model"]["text_condition"] == "empty"


@pytest.fixture(scope="module")
def model_parser():
    from jsonargparse import ArgumentParser

    import refam.cli  # noqa: F401  (registers the component modules, as the CLI does)
    from refam.evaluation.module import RefAMModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RefAMModule, "model")
    return parser


@pytest.mark.parametrize("path", sorted(ABLATIONS.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_row_file_is_a_valid_model_config(path, model_parser):
    """Every component, argument name and type of every row file is checked (without loading weights)."""
    config = yaml.safe_load(path.read_text())
    parsed = model_parser.parse_object({"model": config["model"]})
    assert parsed.model.magnets.class_path == config["model"]["magnets"]["class_path"]
    assert set(config) == {"seed_everything", "trainer", "model", "data"} and config["data"]["datasets"]


def test_grouped_rows_print_as_mean_and_spread_in_the_papers_layout():
    table5 = TABLES[5]
    results = {"stop-words-colour": {"davis/PA": 68.9}, "none": {"davis/PA": 59.8}}
    for seed, value in enumerate([68.0, 69.0, 68.5, 68.2, 68.8]):
        results[f"random-stop-words-seed{seed}"] = {"davis/PA": value}
    text = format_table(table5, results).splitlines()
    assert text[0] == "| AM | davis PA |"
    assert text[2:] == ["| stop words + color | 68.9 |", "| random stop words (5x) | 68.5 ± 0.4 |", "| none | 59.8 |"]


@pytest.mark.slow
def test_ablate_runs_rows_on_the_demo_and_prints_them(tmp_path, capsys, monkeypatch):
    from refam.evaluation.ablations import main

    monkeypatch.chdir(ROOT)
    main(["--table", "4", "--base", "configs/demo.yaml", "--rows", "am-no-np-no-sb,no-am-no-np-no-sb",
          "--output", str(tmp_path), "--trainer.limit_test_batches", "6"])
    table = (tmp_path / "table4/table.md").read_text().splitlines()
    assert table[2].startswith("| AM | NP | SB | shapes-demo PA |")
    with_magnets, without = (line.split(" | ") for line in table[4:6])
    assert with_magnets[:3] == ["| ✓", "-", "-"] and without[:3] == ["| -", "-", "-"]
    # each row ran its own config: the magnets row kept the paper's magnets, the other none
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (tmp_path / "table4").glob("*.yaml")}
    assert configs["no-am-no-np-no-sb"]["model"]["magnets"]["init_args"]["magnets"] == []
    assert configs["am-no-np-no-sb"]["model"]["magnets"]["init_args"]["magnets"][-1] == "pink"
    assert float(with_magnets[3]) != float(without[3])
    # PA by expression kind, from the rows' expression records: the kinds add up to the row's PA
    text = "\n".join(table)
    kinds = text.split("PA by expression kind")[1].strip().splitlines()[2:]
    cells = [line.strip("| ").split(" | ") for line in kinds]
    assert {c[0] for c in cells} >= {"colour", "absolute position"}
    total = sum(int(c[1]) for c in cells)
    weighted = sum(int(c[1]) * float(c[2]) for c in cells) / total
    assert weighted == pytest.approx(float(with_magnets[3]), abs=0.05 + 50 / total)  # cells are rounded to 0.1


def test_a_dataset_named_with_its_split_keeps_its_columns():
    """Video benchmarks report "<benchmark>/<split>/<metric>" (ref_davis17/valid/J&F): the table
    must still find their columns (it printed label cells only)."""
    table9 = TABLES[9]
    results = {"empty": {"ref_davis17/valid/J&F": 42.6, "ref_davis17/valid/J_anno0": 1.0},
               "caption": {"ref_davis17/valid/J&F": 43.0}}
    text = format_table(table9, results).splitlines()
    assert text[0] == "| text condition | ref_davis17/valid J&F |"
    assert text[2:] == ["| empty | 42.6 |", "| caption | 43.0 |"]
