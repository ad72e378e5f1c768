"""`refam score` on tiny DAVIS-layout folders: equal to the official pipeline, its conventions, its errors."""

import csv
import os
from glob import glob

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from refam.errors import DataError, MissingInputError
from refam.metrics.jf import contour_accuracy, region_similarity, statistics
from refam.evaluation.score import main, score_folder, summarize

H, W = 24, 32
PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


def save(path, ids, mode="P"):
    """One mask PNG: palette indices (as DAVIS' utils.save_mask writes them), or a plain 'L' image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8))
    if mode == "P":
        image.putpalette(PALETTE)  # an 'L' image becomes 'P' with the same indices
    image.save(path)


def box(rows, cols):
    m = np.zeros((H, W), dtype=bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


def bear_gt(t):
    """Two objects moving apart; a void (255) band at the bottom of frames 1 and 2."""
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[box((4, 11), (3 + t, 10 + t))] = 1
    ids[box((14, 20), (18 - t, 26 - t))] = 2
    if t in (1, 2):
        ids[22:24, :] = 255
    return ids


def bear_pred(t):
    """Object 1 a row low; object 2 cropped, and lost in frame 3; a spill into the void band."""
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[box((5, 12), (3 + t, 10 + t))] = 1
    if t != 3:
        ids[box((15, 20), (18 - t, 24 - t))] = 2
    ids[22:24, 0:4] = 1
    return ids


def cat_gt(t):
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[box((6, 17), (8, 20 + t))] = 1
    return ids


def cat_pred(t):
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[box((6, 17), (9, 20 + t))] = 1
    return ids


BEAR_FRAMES, CAT_FRAMES = 5, 4


@pytest.fixture()
def folders(tmp_path):
    gt, pred = tmp_path / "Annotations", tmp_path / "pred"
    for t in range(BEAR_FRAMES):
        save(gt / "bear" / f"{t:05d}.png", bear_gt(t))
        save(pred / "bear" / f"{t:05d}.png", bear_pred(t))
    for t in range(CAT_FRAMES):
        save(gt / "cat" / f"{t:05d}.png", cat_gt(t))
        save(pred / "cat" / f"{t:05d}.png", cat_pred(t))
    return pred, gt


# --------------------------------------------------------------------------------------------------
# The official pipeline, transcribed from github.com/davisvideochallenge/davis2017-evaluation as it
# stands (master ac7c43f; scoring unchanged since dc598b4 "Fixed void mask computation", 2019, and
# 53be32c, zero padding in semi-supervised), which ReferFormer vendors for eval_davis.py:
# davis.py (_get_all_elements, get_all_masks: void separated from the objects), results.py
# (read_masks), evaluation.py (_evaluate_semisupervised, _evaluate_unsupervised, evaluate: the void
# mask goes to the unsupervised task only) and evaluation_method.py (J&F-Mean). The per-frame
# db_eval_iou / db_eval_boundary and db_statistics are refam's, which tests/metrics/test_jf.py shows
# equal to the official ones bit for bit.
# --------------------------------------------------------------------------------------------------
def db_eval_iou(annotation, segmentation, void_pixels):
    voids = [None] * len(annotation) if void_pixels is None else void_pixels.astype(bool)
    return np.array([region_similarity(s, a, v) for a, s, v in zip(annotation, segmentation.astype(bool), voids)])


def db_eval_boundary(annotation, segmentation, void_pixels):
    voids = [None] * len(annotation) if void_pixels is None else void_pixels.astype(bool)
    return np.array([contour_accuracy(s, a, v) for a, s, v in zip(annotation, segmentation.astype(bool), voids)])


def official(gt_root, res_root, task):
    J_M, F_M = [], []
    for seq in sorted(os.listdir(gt_root)):
        paths = np.sort(glob(os.path.join(gt_root, seq, '*.png'))).tolist()
        obj = np.array(Image.open(paths[0]))
        masks = np.zeros((len(paths), *obj.shape))
        masks_id = []
        for i, p in enumerate(paths):
            masks[i, ...] = np.array(Image.open(p))
            masks_id.append(''.join(p.split('/')[-1].split('.')[:-1]))
        masks_void = np.zeros_like(masks)
        for i in range(masks.shape[0]):
            masks_void[i, ...] = masks[i, ...] == 255
            masks[i, masks[i, ...] == 255] = 0
        num_objects = int(np.max(masks[0, ...]))
        tmp = np.ones((num_objects, *masks.shape)) * np.arange(1, num_objects + 1)[:, None, None, None]
        all_gt_masks = (tmp == masks[None, ...]) > 0
        if task == 'semi-supervised':
            all_gt_masks, masks_id = all_gt_masks[:, 1:-1, :, :], masks_id[1:-1]
        res = np.zeros((len(masks_id), *np.array(Image.open(os.path.join(res_root, seq, f'{masks_id[0]}.png'))).shape))
        for ii, m in enumerate(masks_id):
            res[ii, ...] = np.array(Image.open(os.path.join(res_root, seq, f'{m}.png')))
        num_objects = int(np.max(res))
        tmp = np.ones((num_objects, *res.shape)) * np.arange(1, num_objects + 1)[:, None, None, None]
        all_res_masks = (tmp == res[None, ...]) > 0
        if all_res_masks.shape[0] < all_gt_masks.shape[0]:
            pad = np.zeros((all_gt_masks.shape[0] - all_res_masks.shape[0], *all_res_masks.shape[1:]))
            all_res_masks = np.concatenate([all_res_masks, pad], axis=0)
        if task == 'semi-supervised':
            assert all_res_masks.shape[0] == all_gt_masks.shape[0]
            j_res, f_res = np.zeros(all_gt_masks.shape[:2]), np.zeros(all_gt_masks.shape[:2])
            for ii in range(all_gt_masks.shape[0]):
                j_res[ii, :] = db_eval_iou(all_gt_masks[ii, ...], all_res_masks[ii, ...], None)
                f_res[ii, :] = db_eval_boundary(all_gt_masks[ii, ...], all_res_masks[ii, ...], None)
        else:
            j_all = np.zeros((all_res_masks.shape[0], all_gt_masks.shape[0], all_gt_masks.shape[1]))
            f_all = np.zeros_like(j_all)
            for ii in range(all_gt_masks.shape[0]):
                for jj in range(all_res_masks.shape[0]):
                    j_all[jj, ii, :] = db_eval_iou(all_gt_masks[ii, ...], all_res_masks[jj, ...], masks_void)
                    f_all[jj, ii, :] = db_eval_boundary(all_gt_masks[ii, ...], all_res_masks[jj, ...], masks_void)
            row_ind, col_ind = linear_sum_assignment(-((np.mean(j_all, axis=2) + np.mean(f_all, axis=2)) / 2))
            j_res, f_res = j_all[row_ind, col_ind, :], f_all[row_ind, col_ind, :]
        for ii in range(all_gt_masks.shape[0]):
            J_M.append(statistics(j_res[ii])[0])
            F_M.append(statistics(f_res[ii])[0])
    return {"J&F-Mean": (np.mean(J_M) + np.mean(F_M)) / 2 * 100, "J-Mean": np.mean(J_M) * 100,
            "F-Mean": np.mean(F_M) * 100}
# ------------------------------------------------ end of the transcription ------------------------------


@pytest.mark.parametrize("task", ["unsupervised", "semi-supervised"])
def test_scores_equal_the_official_pipeline(folders, task):
    pred, gt = folders
    got = summarize(score_folder(pred, gt, task))
    expected = official(str(gt), str(pred), task)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert 20.0 < got["J&F-Mean"] < 95.0  # not a degenerate case


def test_perfect_predictions_score_100(tmp_path, folders):
    _, gt = folders
    perfect = tmp_path / "perfect"
    for path in gt.glob("*/*.png"):
        ids = np.array(Image.open(path))
        save(perfect / path.parent.name / path.name, np.where(ids == 255, 0, ids))
    for task in ("unsupervised", "semi-supervised"):
        scores = summarize(score_folder(perfect, gt, task))
        assert scores["J&F-Mean"] == scores["J-Mean"] == scores["F-Mean"] == scores["J-Recall"] == 100.0
        assert scores["J-Decay"] == 0.0


def test_per_object_frames_and_aggregation(folders):
    pred, gt = folders
    unsup, semi = score_folder(pred, gt, "unsupervised"), score_folder(pred, gt, "semi-supervised")
    assert [(o.video, o.object_id, len(o.scores)) for o in unsup] == [("bear", 1, 5), ("bear", 2, 5), ("cat", 1, 4)]
    assert [(o.video, o.object_id, len(o.scores)) for o in semi] == [("bear", 1, 3), ("bear", 2, 3), ("cat", 1, 2)]
    # bear object 2 is lost in frame 3: J = 0 there (frame index 2 of the semi-supervised frames 1..3)
    assert semi[1].scores.j[2] == 0.0 and unsup[1].scores.j[3] == 0.0
    # the overall J-Mean is the mean of the three per-object means
    assert summarize(semi)["J-Mean"] == pytest.approx(np.mean([np.mean(o.scores.j) for o in semi]) * 100)


def test_semi_supervised_ignores_first_and_last_frames(folders):
    pred, gt = folders
    before = summarize(score_folder(pred, gt, "semi-supervised"))
    (pred / "cat" / "00000.png").unlink()  # never read in the semi-supervised task
    save(pred / "cat" / "00003.png", np.zeros((H, W)))
    assert summarize(score_folder(pred, gt, "semi-supervised")) == before
    with pytest.raises(MissingInputError, match=r"cat/00000\.png: missing prediction for annotated frame 00000"):
        score_folder(pred, gt, "unsupervised")


def test_unsupervised_matches_ids_semi_supervised_takes_them_as_given(tmp_path, folders):
    _, gt = folders
    swapped = tmp_path / "swapped"
    for path in gt.glob("*/*.png"):
        ids = np.array(Image.open(path))
        if path.parent.name == "bear":
            ids = np.choose(ids.clip(0, 3), [0, 2, 1, 0]).astype(np.uint8)  # 1 <-> 2, void -> 0
        save(swapped / path.parent.name / path.name, np.where(ids == 255, 0, ids))
    assert summarize(score_folder(swapped, gt, "unsupervised"))["J&F-Mean"] == 100.0
    semi = score_folder(swapped, gt, "semi-supervised")
    assert [np.mean(o.scores.j) for o in semi] == [0.0, 0.0, 1.0]
    matched = score_folder(swapped, gt, "unsupervised")
    assert [(o.object_id, o.pred_id) for o in matched] == [(1, 2), (2, 1), (1, 1)]


def test_void_pixels_leave_j_and_f_in_the_unsupervised_task_as_in_the_official(tmp_path):
    # davis2017-evaluation since dc598b4 (2019): get_all_masks separates the 255 pixels and the
    # unsupervised task passes them to db_eval_iou and f_measure, which drop them from both masks;
    # the semi-supervised task passes no void mask, so there 255 is plain background.
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    ids = box((12, 19), (4, 11)).astype(np.uint8)  # an 8x8 object whose bottom edge meets...
    ids[20:24, :] = 255  # ...a void band across the frame
    spill = box((12, 23), (4, 11))  # the object, run on through the void band
    for t in range(3):
        save(gt / "v" / f"{t:05d}.png", ids)
        save(pred / "v" / f"{t:05d}.png", spill.astype(np.uint8))
    unsupervised = summarize(score_folder(pred, gt, "unsupervised"))
    # inside the non-void pixels the prediction is the object exactly: J and F are perfect
    assert unsupervised["J-Mean"] == unsupervised["F-Mean"] == 100.0
    semi = summarize(score_folder(pred, gt, "semi-supervised"))
    assert semi["J-Mean"] == pytest.approx(64 / 96 * 100)  # the 4x8 spill counts as wrong here
    assert semi["F-Mean"] < 100.0
    for task, scores in (("unsupervised", unsupervised), ("semi-supervised", semi)):
        expected = official(str(gt), str(pred), task)
        for name, value in expected.items():
            assert scores[name] == pytest.approx(value, abs=1e-9), (task, name)


def test_ids_seen_late_or_never_score_as_the_official_zero_padding(tmp_path, folders):
    # refam keeps only the scores of the ids a frame holds (an absent id is an empty mask there);
    # the official builds every id's mask for every frame. Id 3 shows up in the last frame only and
    # id 2 never in "bear"; "cat" has a spurious id 4 on one frame.
    pred, gt = folders
    late = tmp_path / "late"
    for t in range(BEAR_FRAMES):
        ids = bear_pred(t)
        ids = np.where(ids == 2, 3 if t == BEAR_FRAMES - 1 else 0, ids).astype(np.uint8)
        save(late / "bear" / f"{t:05d}.png", ids)
    for t in range(CAT_FRAMES):
        ids = cat_pred(t).astype(np.uint8)
        if t == 1:
            ids[0:3, 0:3] = 4
        save(late / "cat" / f"{t:05d}.png", ids)
    got = summarize(score_folder(late, gt, "unsupervised"))
    for name, value in official(str(gt), str(late), "unsupervised").items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_binary_0_255_png_is_object_one(tmp_path, folders):
    pred, gt = folders
    binary = tmp_path / "binary"
    for t in range(CAT_FRAMES):
        save(binary / "cat" / f"{t:05d}.png", cat_pred(t) * 255, mode="L")
    assert Image.open(binary / "cat" / "00000.png").mode == "L"
    expected = summarize([o for o in score_folder(pred, gt) if o.video == "cat"])
    assert summarize(score_folder(binary, gt, videos=["cat"])) == expected


def test_an_object_never_predicted_scores_as_empty_in_semi_supervised(tmp_path, folders):
    # the official exits here (fewer predicted ids than objects); scoring the object as empty is refam's choice
    pred, gt = folders
    only_one = tmp_path / "only_one"
    for t in range(BEAR_FRAMES):
        ids = bear_pred(t)
        save(only_one / "bear" / f"{t:05d}.png", np.where(ids == 2, 0, ids))
    objects = score_folder(only_one, gt, "semi-supervised", videos=["bear"])
    assert objects[1].scores.j == [0.0, 0.0, 0.0] and objects[1].scores.f == [0.0, 0.0, 0.0]
    assert objects[0].scores.j == score_folder(pred, gt, "semi-supervised", videos=["bear"])[0].scores.j


def test_errors_name_the_file_and_the_fix(tmp_path, folders):
    pred, gt = folders
    (pred / "cat").rename(tmp_path / "cat_away")
    with pytest.raises(MissingInputError, match=r"pred/cat: no predictions for video cat; .*--videos"):
        score_folder(pred, gt)
    (tmp_path / "cat_away").rename(pred / "cat")
    (pred / "bear" / "00002.png").unlink()
    with pytest.raises(MissingInputError, match=r"bear/00002\.png: missing prediction .* one PNG per annotated frame"):
        score_folder(pred, gt)
    save(pred / "bear" / "00002.png", bear_pred(2) * (bear_pred(2) != 2) + 3 * (bear_pred(2) == 2))
    with pytest.raises(DataError, match=r"bear/00002\.png: object id 3, but video bear has 2 objects"):
        score_folder(pred, gt, "semi-supervised")
    save(pred / "bear" / "00002.png", np.full((H, W), 21))
    with pytest.raises(DataError, match=r"object id 21; .* at most 20"):
        score_folder(pred, gt, "unsupervised")
    save(pred / "bear" / "00002.png", np.zeros((H, W + 1)))
    with pytest.raises(DataError, match=r"bear/00002\.png: 33x24 pixels but the annotations are 32x24"):
        score_folder(pred, gt)
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(pred / "bear" / "00002.png")
    with pytest.raises(DataError, match=r"a RGB image; save masks as palette"):
        score_folder(pred, gt)
    with pytest.raises(MissingInputError, match="--gt .*: no such folder"):
        score_folder(pred, tmp_path / "nowhere")


def test_cli_prints_scores_per_video_and_writes_csv(tmp_path, folders, capsys):
    pred, gt = folders
    from refam.cli import main as refam_main  # the `refam score` dispatch

    out_csv = tmp_path / "scores.csv"
    refam_main(["score", "--pred", str(pred), str(pred), "--gt", str(gt), "--task", "semi-supervised",
                "--per-video", "--csv", str(out_csv)])
    printed = capsys.readouterr().out
    expected = official(str(gt), str(pred), "semi-supervised")
    assert f"{expected['J&F-Mean']:.2f}" in printed and "mean of 2 runs" in printed
    assert "bear" in printed and "cat" in printed  # per-video rows
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["video"], r["object"]) for r in rows[:3]] == [("bear", "1"), ("bear", "2"), ("cat", "1")]
    overall = [r for r in rows if r["video"] == "(all)"]
    assert float(overall[0]["J&F-Mean"]) == pytest.approx(expected["J&F-Mean"], abs=1e-6)
    assert rows[-1]["run"] == "(mean)"


def test_cli_errors_are_one_line_and_exit_2(tmp_path, folders, capsys):
    pred, gt = folders
    (pred / "cat" / "00001.png").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["--pred", str(pred), "--gt", str(gt)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refam: error: ") and "cat/00001.png" in err and "\n" not in err
