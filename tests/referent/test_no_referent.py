"""The no-referent flag (issue M, Honest): the statistic it reads is the one bench/no_referent.py
measured, on the kept tokens and the rest as the bench names them; its threshold sits on the side
and at the false-positive rate it was chosen for; a calibration file that is not one is refused in
one line; on the shipped refam-shapes model an expression naming a colour the held-out scene lacks
is flagged with a warning that gives the measured rates, the scene's present expressions are not;
and a model without the file, a call with other settings or a caption, gets no flag (None)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from refam.aggregators.base import Aggregation
from refam.aggregators.magnets import AppendMagnets
from refam.embedded import REFAM_SHAPES
from refam.errors import ConfigError
from refam.referent.calibration import FILE, read_calibration
from refam.referent.operating_point import rates, threshold_at
from refam.referent.statistics import expression_statistics
from refam.shapes.varied import make_varied_scene
from refam.types import Expression, Sample, TokenInfo, TokenMaps

SHIPPED = read_calibration(REFAM_SHAPES / FILE)
# a held-out scene (varied "test" split, held-out indices) of a red triangle and a blue circle: "the
# black shape" names a colour it lacks, the others name what is there
SCENE = 20007
PRESENT, ABSENT = ["the blue circle", "the blue shape"], "the black shape"


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("no_referent")


def token(piece: str, *, magnet: bool = False, special: bool = False) -> TokenInfo:
    return TokenInfo(piece, "" if special else piece.strip("▁"), special, magnet)


def test_the_statistics_read_the_kept_tokens_against_the_magnets_and_end_token():
    """On planted maps: "the" (dropped), "red" and "circle" (kept), the magnet "_", the end token and
    a padding slot. The most any kept word takes is red's 0.4 (the magnet's 0.7 and the padding's
    0.9 are not the words'); the rest is the magnet and the end token, never "the" or the padding."""
    tokens = [token("▁the"), token("▁red"), token("▁circle"), token("_", magnet=True), token("</s>", special=True),
              token("<pad>", special=True)]
    p = torch.zeros(6, 2, 3)
    p[:, 0, 0] = torch.tensor([0.1, 0.4, 0.2, 0.2, 0.1, 0.0])  # the kept words' peak: 0.6 together
    p[:, 1, 2] = torch.tensor([0.0, 0.1, 0.1, 0.7, 0.1, 0.0])
    p[:, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 0.9])  # the padding's mass (a buggy softmax's)
    kept = torch.tensor([[False, True, True, False, False, False]])
    maps = TokenMaps(torch.zeros(1, 6, 2, 3), torch.tensor([[True] * 5 + [False]]), torch.zeros(1, 6), [tokens])
    aggregation = Aggregation(torch.zeros(1, 2, 3), p[None], kept, torch.zeros(1, 6, dtype=torch.bool))
    mask = np.zeros((4, 6), dtype=bool)
    mask[:2] = True
    values = expression_statistics(maps, aggregation, 0, mask)
    assert values["max kept-token P"] == pytest.approx(0.4)
    assert values["kept mass at peak"] == pytest.approx(0.6) and values["rest at peak"] == pytest.approx(0.3)
    assert values["rest mean"] == pytest.approx((0.3 + 0.8 + 0.1) / 6)
    assert values["mask area"] == pytest.approx(0.5)


def test_the_threshold_flags_at_most_the_chosen_share_of_present_ones_on_the_flags_side():
    """Absent referents score low: the cut flags the most absent ones with at most 1 present in 10
    flagged, and only values below it; the same scores negated flag above."""
    present = np.arange(10, 20, dtype=float)  # 10 .. 19
    absent = np.array([1.0, 2.0, 3.0, 10.5, 12.0])
    scores, labels = np.concatenate([present, absent]), np.array([False] * 10 + [True] * 5)
    cut = threshold_at(scores, labels, "below", 0.1)
    assert 10.5 < cut < 11  # flags 10 (one present) and 10.5, not 11
    measured = rates(scores, labels, "below", cut)
    assert measured["false_positive_rate"] == 0.1 and measured["recall"] == 0.8 and measured["precision"] == 0.8
    above = threshold_at(-scores, labels, "above", 0.1)
    assert above == pytest.approx(-cut) and rates(-scores, labels, "above", above)["recall"] == 0.8


def test_the_shipped_calibration_is_the_benchs_choice_on_its_own_numbers():
    """The file names the statistic that flags the most absent referents on calibration at <= 5 %
    present flagged, and its held-out rates are the ones the warning quotes."""
    record = json.loads((REFAM_SHAPES / FILE).read_text())
    candidates = record["candidates"]
    assert record["statistic"] == max(candidates, key=lambda n: candidates[n]["calibration_recall"])
    assert record["calibration"]["false_positive_rate"] <= record["max_false_positive_rate"] == 0.05
    assert (SHIPPED.statistic, SHIPPED.direction) == ("max kept-token P", "below")
    assert SHIPPED.recall == record["held_out"]["recall"] and record["held_out"]["scene_indices"] == [20000, 20199]


def test_the_pipelines_statistic_is_the_benchs_on_the_same_maps(model, bench):
    """bench/no_referent.py's rows for two held-out scenes and the pipeline's predictions on the same
    samples (the bench's sample ids: the noise derives from them) carry the same value."""
    rows = bench.measure(model, "held-out", 2)
    for index in (20000, 20001):
        ours = [r for r in rows if r["scene"] == index]
        sample = Sample(f"no-referent-{index}", make_varied_scene("test", index).image,
                        [Expression(r["text"], str(k)) for k, r in enumerate(ours)])
        result = model.pipeline.segment_sample(sample)
        assert len(result.predictions) == len(ours) >= 5
        for row, prediction in zip(ours, result.predictions):
            assert prediction.referent_statistic == pytest.approx(row[SHIPPED.statistic], rel=1e-6, abs=1e-7)
            assert prediction.no_referent == (row[SHIPPED.statistic] < SHIPPED.threshold)


def test_an_absent_colour_is_flagged_with_the_measured_rates_and_the_present_ones_are_not(model):
    scene = make_varied_scene("test", SCENE)
    assert {o.colour for o in scene.objects} == {"red", "blue"}
    *present, absent = model.segment(scene.image, PRESENT + [ABSENT])
    assert absent.no_referent is True and absent.referent_statistic < SHIPPED.threshold - 0.05
    [warning] = absent.warnings
    assert warning.startswith("may name nothing in the image: the most attention any of its words takes at one place "
                              f"in the image is {absent.referent_statistic:.3g}, under the no-referent flag's 0.449")
    assert (f"catches {100 * SHIPPED.recall:.0f} % of expressions naming an absent object, and fires on "
            f"{100 * SHIPPED.false_positive_rate:.0f} % of those naming a present one") in warning
    assert "200 held-out shape scenes" in warning
    for prediction in present:
        assert prediction.no_referent is False and prediction.referent_statistic > SHIPPED.threshold + 0.05
        assert prediction.warnings == []


def test_other_settings_a_caption_or_an_unlike_expression_get_no_flag(model):
    """The rates were measured with the default settings, no caption, and expressions of known words
    with a content word: any other call or expression says nothing (it is flagged in the defaults)."""
    image = make_varied_scene("test", SCENE).image
    no_magnets = replace(model.settings, magnets=AppendMagnets([]))
    zebra, it = model.segment(image, ["the black zebra", "it"])
    assert len(zebra.warnings) == len(it.warnings) == 1  # the caveats' own
    for prediction in (model.segment(image, ABSENT, settings=no_magnets)[0],
                       model.segment(image, ABSENT, caption="a red triangle and a blue circle")[0], zebra, it):
        assert prediction.no_referent is None and prediction.referent_statistic is None
        assert not any("may name nothing" in w for w in prediction.warnings)


def copy_of_the_model(folder: Path, calibration: str | None) -> "RefAM":  # noqa: F821
    """refam-shapes' weights copied to `folder` with `calibration` as its no_referent.json (None: no
    file), run in the embedded pipeline's settings (as bench/no_referent.py --model runs a folder)."""
    from refam import RefAM
    from refam.sections import build_pipeline, model_section

    shutil.copytree(REFAM_SHAPES, folder, ignore=shutil.ignore_patterns(FILE))
    if calibration is not None:
        (folder / FILE).write_text(calibration)
    section = model_section(None)
    section["extractor"]["init_args"]["pretrained"] = str(folder)
    return RefAM(build_pipeline(section), "cpu", configured=True)


def test_the_file_beside_the_weights_is_what_turns_the_flag_on(tmp_path):
    image = make_varied_scene("test", SCENE).image
    without = copy_of_the_model(tmp_path / "without", None)
    [prediction] = without.segment(image, ABSENT)
    assert prediction.no_referent is None and prediction.referent_statistic is None and prediction.warnings == []
    assert without.card.no_referent.startswith("none: no calibration")
    beside = copy_of_the_model(tmp_path / "beside", (REFAM_SHAPES / FILE).read_text())
    assert beside.segment(image, ABSENT)[0].no_referent is True


def test_the_video_model_has_no_flag(model):
    assert model.video_card.no_referent.startswith("none: no calibration")
    assert model.card.no_referent.startswith("fires when max kept-token P")
    assert "catches 40.1 %" in model.card.markdown() and "shape 0 %" in model.card.markdown()


def broken(key: str, value) -> str:
    record = json.loads((REFAM_SHAPES / FILE).read_text())
    *path, last = key.split(".")
    holder = record
    for part in path:
        holder = holder[part]
    if value is KeyError:
        del holder[last]
    else:
        holder[last] = value
    return json.dumps(record)


BROKEN = {
    "threshold missing": (broken("threshold", KeyError), "no key 'threshold'"),
    "threshold a word": (broken("threshold", "low"), "'threshold' must be a number, got 'low'"),
    "threshold nan": (broken("threshold", float("nan")), "'threshold' must be a number, got nan"),
    "direction unknown": (broken("direction", "sideways"), "'direction' must be one of ['above', 'below'], got 'sideways'"),
    "kind recall null": (broken("held_out.per_kind.colour.recall", None),
                         "'held_out.per_kind.colour.recall' must be a share"),
    "statistic unknown": (broken("statistic", "peakiness"), "'statistic' must be one of"),
    "recall over 1": (broken("held_out.recall", 1.5), "'held_out.recall' must be a share between 0 and 1, got 1.5"),
    "rate a bool": (broken("held_out.false_positive_rate", True), "'held_out.false_positive_rate' must be a share"),
    "pipeline a list": (broken("pipeline", [1]), "'pipeline' must be the model section"),
    "a list": ("[1, 2]", "a no-referent calibration is a JSON object, not a list"),
    "not JSON": ("{not json", "cannot read the no-referent calibration"),
}


@pytest.mark.parametrize(("text", "said"), BROKEN.values(), ids=BROKEN.keys())
def test_a_calibration_that_is_not_one_is_refused_in_one_line_naming_the_file_and_key(tmp_path, text, said):
    path = tmp_path / FILE
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_calibration(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and said in message and "\n" not in message


def test_refam_predict_refuses_a_broken_calibration_with_exit_2(tmp_path, capsys):
    from refam.apps.predict import main

    folder = tmp_path / "model"
    shutil.copytree(REFAM_SHAPES, folder)
    (folder / FILE).write_text(broken("direction", "up"))
    image = tmp_path / "scene.png"
    make_varied_scene("test", SCENE).image.save(image)
    with pytest.raises(SystemExit) as code:
        main(["--model", str(folder), "--image", str(image), "--expression", ABSENT, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and "\n" not in err
    assert err == (f"refam: error: {folder / FILE}: 'direction' must be one of ['above', 'below'], got 'up'; write it "
                   "again with bench/no_referent.py --write-calibration, or remove the file to run without the flag")


def test_refam_predict_writes_and_prints_the_flag(tmp_path, capsys):
    from refam.apps.predict import main

    image = tmp_path / "scene.png"
    make_varied_scene("test", SCENE).image.save(image)
    with pytest.raises(SystemExit) as code:
        main(["--image", str(image), "--expression", PRESENT[0], "--expression", ABSENT, "--output", str(tmp_path / "out")])
    assert code.value.code == 0
    present = json.loads((tmp_path / "out/scene/0-the-blue-circle.json").read_text())
    absent = json.loads((tmp_path / "out/scene/1-the-black-shape.json").read_text())
    assert present["no_referent"] is False and present["warnings"] == []
    assert absent["no_referent"] is True and absent["referent_statistic"] < SHIPPED.threshold
    [warning] = absent["warnings"]
    assert f'  warning: "{ABSENT}": {warning}' in capsys.readouterr().out.splitlines()
