"""Ref-DAVIS17's runs: palette merging as MaskWriter does it, and per-run sums that add up across processes."""

import numpy as np
import pytest

from refam.metrics.davis import RunPalettes, RunScores, VideoEvaluation, evaluate_runs
from refam.types import VideoExpression


class Expression(VideoExpression):
    def __init__(self, expression_id, obj, annotator):
        super().__init__(f"expression {expression_id}", expression_id, [obj])
        self.annotator = annotator


def square(top, left, size=4, shape=(12, 16)):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_palettes_merge_a_run_in_listed_order_whatever_order_masks_arrive():
    expressions = [Expression("0", 1, 0), Expression("1", 1, 1), Expression("2", 2, 0), Expression("3", 2, 1)]
    a, b = square(2, 2), square(4, 4)  # overlapping
    arrivals = [(expressions[2], 0, b), (expressions[0], 0, a), (expressions[1], 0, b), (expressions[3], 0, a)]
    for order in (arrivals, arrivals[::-1]):
        palettes = RunPalettes(expressions)
        for expression, frame, mask in order:
            palettes.add(expression, frame, mask)
        assert palettes.runs == [0, 1]
        run0 = palettes.pop(0, 0, a.shape)
        expected = np.zeros(a.shape, dtype=np.uint8)
        expected[a], expected[b] = 1, 2  # object 2 is listed later: it wins the overlap
        assert np.array_equal(run0, expected)
        expected = np.zeros(a.shape, dtype=np.uint8)
        expected[b], expected[a] = 1, 2
        assert np.array_equal(palettes.pop(1, 0, a.shape), expected)
        assert not palettes.pop(0, 0, a.shape).any()  # popped frames are forgotten: nothing is held


def annotation(t):
    ids = np.zeros((12, 16), dtype=np.uint8)
    ids[square(1, 1 + t)] = 1
    ids[square(6, 10 - t)] = 2
    ids[11, :] = 255
    return ids


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_run_sums_of_two_processes_equal_one_process():
    rng = np.random.default_rng(3)
    videos = []
    for v in range(5):
        runs = {}
        for run in range(4):
            evaluation = VideoEvaluation(f"v{v}", 2)
            for t in range(3 + v):
                evaluation.add_frame(f"{t:05d}", annotation(t % 4), rng.integers(0, 3, (12, 16)).astype(np.uint8))
            runs[run] = evaluation.finish()
        videos.append(runs)
    whole, left, right = RunScores(), RunScores(), RunScores()
    for k, runs in enumerate(videos):
        for run, objects in runs.items():
            whole.update(run, objects)
            (left if k % 2 else right).update(run, objects)  # a video is scored whole by one process
    for metric_left, metric_right in zip(left.runs, right.runs):
        metric_left.merge_state(metric_right)  # what DDP's sum reduction does with every state
    a, b = whole.compute(), left.compute()
    assert a.keys() == b.keys() and int(a["runs"]) == 4
    for key in a:
        assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-9), key
    # the headline is the mean of the runs' figures
    assert float(a["J&F-Mean"]) == pytest.approx(np.mean([float(a[f"run{k}/J&F-Mean"]) for k in range(4)]))
    assert float(RunScores().compute()["J&F-Mean"]) == 0.0  # nothing scored reads 0


def test_evaluate_runs_skips_unannotated_frames_and_counts_objects_in_the_first_annotated():
    expressions = [Expression("0", 1, 0), Expression("1", 2, 0)]
    palettes = RunPalettes(expressions)
    for t in range(3):
        palettes.add(expressions[0], t, square(1, 1 + t))
        palettes.add(expressions[1], t, square(6, 10 - t))
    labels = {0: annotation(0), 2: annotation(2)}  # frame 1 has no annotation
    runs = evaluate_runs("v", ["00000", "00001", "00002"], labels.get, palettes)
    assert list(runs) == [0]
    assert [(o.object_id, o.pred_id, len(o.scores)) for o in runs[0]] == [(1, 1, 2), (2, 2, 2)]
    assert all(o.scores.j == [1.0, 1.0] and o.scores.f == [1.0, 1.0] for o in runs[0])
