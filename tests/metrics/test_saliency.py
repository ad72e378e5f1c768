"""Acc / mIoU / mAP of saliency maps (REFAM Table 11): hand-computed cases, and agreement with
transcriptions of the reference scripts (see refam/metrics/saliency.py for the sources)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score
from torchvision import transforms

from refam.metrics import SaliencyScores
from refam.metrics.saliency import resize_mask_nearest, two_channel_average_precision


def at_gt_resolution(**kwargs) -> SaliencyScores:
    return SaliencyScores(eval_size=None, **kwargs)


def scores(metric: SaliencyScores) -> tuple[float, float, float]:
    out = metric.compute()
    return out["Acc"].item(), out["mIoU"].item(), out["mAP"].item()


# A 4x4 image whose top-left 2x2 block is the object.
TARGET = torch.zeros((4, 4), dtype=torch.bool)
TARGET[:2, :2] = True


def test_perfect_heatmap_scores_100_everywhere():
    metric = at_gt_resolution()
    metric.update(TARGET.float(), TARGET)
    assert scores(metric) == pytest.approx((100.0, 100.0, 100.0))


def test_inverted_heatmap():
    metric = at_gt_resolution()
    metric.update(1.0 - TARGET.float(), TARGET)
    acc, miou, m_ap = scores(metric)
    assert acc == 0.0 and miou == 0.0
    # Every positive entry of [1-s, s] scores 0 and every negative 1: the single PR step is
    # recall 1 at precision 1/2 (half the 2·H·W entries are positive).
    assert m_ap == pytest.approx(50.0)


def test_constant_heatmap_is_all_background_and_ties_for_ap():
    metric = at_gt_resolution()
    metric.update(torch.full((4, 4), 0.3), TARGET)
    acc, miou, m_ap = scores(metric)
    assert acc == pytest.approx(12 / 16 * 100)  # the 12 background pixels are right
    assert miou == pytest.approx((12 / 16 + 0 / 4) / 2 * 100)  # background IoU 12/16, object IoU 0
    # Reference: min-max gives NaN, nan_to_num makes both channels 0, all entries tie -> AP = 1/2.
    assert m_ap == pytest.approx(50.0)


def test_a_pixel_at_the_mean_is_background():
    # SegmentationAbstractClass: `coefficients > mean`; imagenet_seg_eval: `Res.gt(Res.mean())`
    for before in (True, False):
        metric = at_gt_resolution(threshold_before_resize=before)
        metric.update(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[False, False, True]]))
        assert scores(metric)[0] == pytest.approx(100.0)


def test_dataset_totals_are_not_means_of_per_image_scores():
    # Image A (1x4): found exactly. bg I=3 U=3, fg I=1 U=1, 4/4 correct, AP 1.
    target_a = torch.tensor([[True, False, False, False]])
    heat_a = target_a.float()
    # Image B (1x8): object = first 4 pixels, heatmap lights the first 2 (mean 0.25 -> mask = first 2).
    # TP=2 FN=2 TN=4 FP=0: bg I=4 U=6, fg I=2 U=4, 6/8 correct.
    # AP: 8 entries score 1 (6 positive), 8 score 0 (2 positive) -> 0.75·0.75 + 0.25·0.5 = 0.6875.
    target_b = torch.tensor([[True] * 4 + [False] * 4])
    heat_b = torch.tensor([[1.0, 1.0] + [0.0] * 6])
    metric = at_gt_resolution()
    metric.update(heat_a, target_a)
    metric.update(heat_b, target_b)
    acc, miou, m_ap = scores(metric)
    assert acc == pytest.approx(10 / 12 * 100)  # mean of per-image would be 87.5
    assert miou == pytest.approx(((3 + 4) / (3 + 6) + (1 + 2) / (1 + 4)) / 2 * 100)  # 68.89, not 79.17
    assert m_ap == pytest.approx((1.0 + 0.6875) / 2 * 100)
    assert metric.compute()["images"].item() == 2


def test_states_sum_across_processes():
    rng = np.random.default_rng(0)
    pairs = [(torch.from_numpy(rng.random((8, 8))).float(), torch.from_numpy(rng.random((20, 30)) > 0.6))
             for _ in range(5)]
    single, rank0, rank1 = (SaliencyScores(eval_size=(40, 40)) for _ in range(3))
    for i, (heat, gt) in enumerate(pairs):
        single.update(heat, gt)
        (rank0 if i % 2 else rank1).update(heat, gt)
    rank0.merge_state(rank1)  # what dist_reduce_fx="sum" does across ranks
    for key, value in single.compute().items():
        assert rank0.compute()[key].item() == pytest.approx(value.item(), abs=1e-12), key


def test_heatmap_is_upsampled_nearest_to_the_ground_truth():
    metric = at_gt_resolution()
    metric.update(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), TARGET)  # a 2x2 token grid for a 4x4 image
    assert scores(metric) == pytest.approx((100.0, 100.0, 100.0))


def test_default_evaluates_at_224_with_pil_nearest():
    gt = np.zeros((10, 7), dtype=bool)
    gt[3:8, 2:5] = True
    resized = resize_mask_nearest(gt, (224, 224))
    reference = np.asarray(transforms.Resize((224, 224), Image.NEAREST)(Image.fromarray(gt.astype(np.uint8)))) != 0
    assert resized.shape == (224, 224) and np.array_equal(resized, reference)
    metric = SaliencyScores()
    metric.update(torch.from_numpy(resized).float(), gt)  # a perfect map at the evaluation size
    assert scores(metric) == pytest.approx((100.0, 100.0, 100.0))


def test_void_pixels_are_ignored_in_the_standard_variant():
    void = torch.zeros((4, 4), dtype=torch.bool)
    void[3, :] = True
    heat = TARGET.float().clone()
    heat[3, :] = 1.0  # wrong on the void row only
    with_void, clean = at_gt_resolution(), at_gt_resolution()
    with_void.update(heat, TARGET, void=void)
    clean.update(TARGET[:3].float(), TARGET[:3])
    assert scores(with_void) == pytest.approx(scores(clean))


def test_a_given_mask_replaces_the_mean_threshold():
    metric = at_gt_resolution()
    metric.update(torch.rand(4, 4), TARGET, mask=TARGET)
    acc, miou, _ = scores(metric)
    assert (acc, miou) == pytest.approx((100.0, 100.0))


def test_conceptattention_imagenet_miou_is_a_function_of_accuracy():
    rng = np.random.default_rng(1)
    metric = SaliencyScores(eval_size=(40, 40), variant="conceptattention-imagenet")
    for _ in range(3):
        metric.update(torch.from_numpy(rng.random((16, 16))).float(), torch.from_numpy(rng.random((40, 50)) > 0.5))
    acc, miou, _ = scores(metric)
    assert miou == pytest.approx(acc / (200.0 - acc) * 100.0)


def test_bad_inputs_are_refused():
    metric = at_gt_resolution()
    with pytest.raises(TypeError, match="bool mask"):
        metric.update(torch.rand(4, 4), TARGET.float())
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((4, 4), float("nan")), TARGET)
    with pytest.raises(ValueError, match="variant"):
        SaliencyScores(variant="chefer")


def test_average_precision_equals_sklearn_with_ties_and_raw_scores():
    rng = np.random.default_rng(2)
    for scale in (1.0, 500.0):  # raw coefficients far outside [0, 1] must not be squashed into ties
        heat = torch.from_numpy(np.round(rng.normal(size=(30, 30)) * 4) / 4 * scale).float()
        gt = torch.from_numpy(rng.random((30, 30)) > 0.7)
        valid = torch.from_numpy(rng.random((30, 30)) > 0.1)
        s, t = heat[valid].numpy(), gt[valid].numpy()
        expected = average_precision_score(np.concatenate([1 - t, t]), np.concatenate([1 - s, s]))
        # torchmetrics divides in float32, sklearn in float64; a tie handled differently costs far more
        assert two_channel_average_precision(heat, gt, valid) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Transcriptions of the reference functions (semantics kept line for line, names shortened).
# Chefer: hila-chefer/Transformer-Explainability utils/metrices.py (argmax over channels first).
# ConceptAttention: helblazer811/ConceptAttention concept_attention/utils.py (argmax commented out).


def ref_pix_accuracy(predict, target, argmax):
    if argmax:
        _, predict = torch.max(predict, 0)
    predict = predict.cpu().numpy() + 1
    target = target.cpu().numpy() + 1
    return np.sum(target > 0), np.sum((predict == target) * (target > 0))


def ref_intersection_union(predict, target, nclass, argmax):
    if argmax:
        _, predict = torch.max(predict, 0)
    predict = predict.cpu().numpy() + 1
    target = target.cpu().numpy() + 1
    predict = predict * (target > 0).astype(predict.dtype)
    intersection = predict * (predict == target)
    area_inter, _ = np.histogram(intersection, bins=nclass, range=(1, nclass))
    area_pred, _ = np.histogram(predict, bins=nclass, range=(1, nclass))
    area_lab, _ = np.histogram(target, bins=nclass, range=(1, nclass))
    return area_inter, area_pred + area_lab - area_inter


def ref_ap_scores(predict, target, ignore_index=-1):
    total = []
    for pred, tgt in zip(predict, target):
        target_expand = tgt.unsqueeze(0).expand_as(pred)
        keep = target_expand.cpu().numpy().reshape(-1) != ignore_index
        one_hot = torch.zeros_like(target_expand).scatter_(0, tgt.unsqueeze(0).clamp(min=0).long(), 1)
        p = np.nan_to_num(pred.cpu().numpy().reshape(-1))[keep]
        t = one_hot.cpu().numpy().reshape(-1)[keep]
        total.append(np.nan_to_num(average_precision_score(t, p)))
    return total


class RefTotals:
    """The scripts' running totals and their final formulas."""

    def __init__(self):
        self.correct = self.label = 0.0
        self.inter = self.union = 0.0
        self.ap = []

    def add(self, correct_label, inter_union, ap):
        (label, correct), (inter, union) = correct_label, inter_union
        self.correct += correct
        self.label += label
        self.inter += inter
        self.union += union
        self.ap += [ap]

    def result(self):
        eps = np.spacing(1, dtype=np.float64)
        acc = self.correct / (eps + self.label)
        miou = (self.inter / (eps + self.union)).mean()
        return acc * 100, miou * 100, np.mean(self.ap) * 100


def random_case(rng, grid=64, size=None):
    """A random heatmap on a token grid and a blob-like ground truth at some image size."""
    height, width = size or (int(rng.integers(30, 90)), int(rng.integers(30, 90)))
    heat = torch.from_numpy(rng.normal(size=(grid, grid))).float()
    coarse = rng.random((5, 5)) > 0.5
    gt = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.NEAREST)) != 0
    return heat, gt


def conceptattention_imagenet(heat, gt):
    """experiments/imagenet_segmentation/run_experiment.py with SegmentationAbstractClass's mask."""
    mask = heat > heat.mean()
    label_tf = transforms.Compose([transforms.Resize((224, 224), Image.NEAREST), transforms.ToTensor()])
    labels = label_tf(Image.fromarray(gt.astype(np.uint8)))
    coefficients = (heat - heat.min()) / (heat.max() - heat.min())
    coefficients = F.interpolate(coefficients[None, None], size=(224, 224), mode="nearest").squeeze()
    mask = F.interpolate(mask.float()[None, None], size=(224, 224), mode="nearest").squeeze()
    labels = torch.Tensor(labels.bool().numpy().squeeze())
    stacked_mask, stacked_target = torch.stack((1 - mask, mask)), torch.stack((1 - labels, labels))
    ap = np.nan_to_num(ref_ap_scores(torch.stack((1 - coefficients, coefficients)).unsqueeze(0), labels.unsqueeze(0)))
    return (ref_pix_accuracy(stacked_mask, stacked_target, argmax=False),
            ref_intersection_union(stacked_mask, stacked_target, 2, argmax=False), ap)


def chefer_imagenet(res14, gt):
    """baselines/ViT/imagenet_seg_eval.py::eval_batch for a 14x14 relevance map."""
    labels = torch.from_numpy(np.array(transforms.Resize((224, 224), Image.NEAREST)(
        Image.fromarray(gt.astype(np.uint8)))).astype("int32")).long()
    res = F.interpolate(res14[None, None], scale_factor=16, mode="bilinear")
    res = (res - res.min()) / (res.max() - res.min())
    ret = res.mean()
    output = torch.cat((res.le(ret).float(), res.gt(ret).float()), 1)
    output_ap = torch.cat((1 - res, res), 1)
    ap = np.nan_to_num(ref_ap_scores(output_ap, labels[None]))
    return (ref_pix_accuracy(output[0], labels, argmax=True),
            ref_intersection_union(output[0], labels, 2, argmax=True), ap)


def conceptattention_voc(heat, label_map, mask=None):
    """experiments/pascal_voc_segmentation/run_single_class_split_experiment.py (raw coefficients)."""
    label_tf = transforms.Compose([transforms.Resize((224, 224), Image.NEAREST), transforms.ToTensor(),
                                   transforms.Lambda(lambda x: x * 255)])
    labels = label_tf(Image.fromarray(label_map, mode="P")).numpy().astype("int32")  # np.array(...) there
    labels[labels == 255] = -1
    labels = torch.from_numpy(labels).long()
    labels[labels >= 1] = 1  # binary_class=True
    if mask is None:
        mask = heat > heat.mean()
    coefficients = F.interpolate(heat[None, None].float(), size=(224, 224), mode="nearest").squeeze()
    mask = F.interpolate(mask[None, None].float(), size=(224, 224), mode="nearest").squeeze()
    labels = torch.Tensor(labels).unsqueeze(0)
    stacked_mask = torch.stack((1 - mask, mask))
    stacked_target = torch.stack((1 - labels.squeeze(), labels.squeeze()))
    ap = np.nan_to_num(ref_ap_scores(torch.stack((1 - coefficients, coefficients)).unsqueeze(0), labels.squeeze(0)))
    return (ref_pix_accuracy(stacked_mask, stacked_target, argmax=False),
            ref_intersection_union(mask, labels, 2, argmax=False), ap)


def assert_same(metric, reference):
    acc, miou, m_ap = reference.result()
    ours = scores(metric)
    assert ours[0] == pytest.approx(acc, abs=1e-9)
    assert ours[1] == pytest.approx(miou, abs=1e-9)
    assert ours[2] == pytest.approx(m_ap, abs=1e-4)  # ×100; float32 division in torchmetrics


def test_matches_conceptattention_imagenet_script():
    rng = np.random.default_rng(3)
    metric, reference = SaliencyScores(variant="conceptattention-imagenet"), RefTotals()
    for _ in range(3):
        heat, gt = random_case(rng)
        metric.update(heat, gt)
        reference.add(*conceptattention_imagenet(heat, gt))
    assert_same(metric, reference)


def test_matches_chefer_imagenet_script():
    rng = np.random.default_rng(4)
    metric, reference = SaliencyScores(resize="bilinear", threshold_before_resize=False), RefTotals()
    for _ in range(3):
        heat, gt = random_case(rng, grid=14)
        metric.update(heat, gt)
        reference.add(*chefer_imagenet(heat, gt))
    assert_same(metric, reference)


@pytest.mark.parametrize("given_mask", [False, True])
def test_matches_conceptattention_voc_script(given_mask):
    rng = np.random.default_rng(5)
    metric, reference = SaliencyScores(normalize=False, variant="conceptattention-voc"), RefTotals()
    for _ in range(3):
        heat, gt = random_case(rng)
        heat = heat * 40.0  # raw coefficients, far outside [0, 1]
        label_map = np.where(gt, 12, 0).astype(np.uint8)
        border = np.zeros_like(gt)
        border[:, ::9] = True  # void lines crossing object and background
        label_map[border] = 255
        mask = torch.from_numpy(rng.random((64, 64)) > 0.5) if given_mask else None
        metric.update(heat, label_map == 12, void=label_map == 255, mask=mask)
        reference.add(*conceptattention_voc(heat, label_map, mask))
    assert_same(metric, reference)
