"""The paper's configs parse with the paper's settings and load real checkpoints by path.

`refam test` runs in this process (`refam_here`); test_cli.py runs the console script itself."""

import json
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"refcoco": ["val", "testA", "testB"], "refcoco+": ["val", "testA", "testB"], "refcocog": ["val", "test"]}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_config_has_the_paper_settings(name, refam_here):
    result = refam_here("test", "--config", f"configs/{name}.yaml", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    extractor = config["model"]["extractor"]["init_args"]
    assert extractor["trajectory"]["init_args"] == {"sigma": 0.75, "shift": False}
    assert extractor["blocks"] is None  # all blocks
    assert extractor["pretrained"] == "checkpoints/FLUX.1-dev"
    assert config["model"]["magnets"]["init_args"]["magnets"] == ["_", "with", "to", "and", "pink"]
    assert config["model"]["magnets"]["init_args"]["filter_stop_words"] is True
    assert config["model"]["segmenter"]["init_args"]["checkpoint"].endswith(".pt")
    datasets = [d["init_args"] for d in config["data"]["datasets"]]
    assert [d["split"] for d in datasets] == SPLITS[name]
    assert {d["dataset"] for d in datasets} == {name}
    assert all(d["captions_file"].endswith("captions_train2014.json") for d in datasets)  # caption conditioning
    assert config["trainer"]["use_distributed_sampler"] is False


def test_paper_config_loads_checkpoints_by_path(tmp_path, refam_here):
    """configs/refcoco.yaml run as is, only pointed at a tiny FLUX folder and a SAM2 .pt on disk."""
    from refam.segmenters.sam2 import SAM2PointSegmenter

    sam2 = SAM2PointSegmenter(config="configs/sam2.1/sam2.1_hiera_t.yaml", image_size=256, allow_random_weights=True)
    sam2.setup(torch.device("cpu"))
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sam2.predictor.model.state_dict()}, checkpoint)
    smoke = ROOT / "assets/smoke/refer"
    dataset = {"class_path": "refam.data.refcoco.RefCOCODataset",
               "init_args": {"data_root": str(smoke), "split": "val", "captions_file": str(smoke / "captions_train2014.json")}}
    result = refam_here(
        "test", "--config", "configs/refcoco.yaml",
        "--model.extractor.init_args.pretrained", str(ROOT / "assets/smoke/tiny-flux"),
        "--model.extractor.init_args.torch_dtype", "float32",
        "--model.extractor.init_args.resolution", "256",
        "--model.extractor.init_args.caption_max_tokens", "32",
        "--model.segmenter.init_args.config", "configs/sam2.1/sam2.1_hiera_t.yaml",
        "--model.segmenter.init_args.checkpoint", str(checkpoint),
        "--model.segmenter.init_args.image_size", "256",
        "--data.datasets", json.dumps(dataset), "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANDOM weights" not in result.stderr  # the checkpoint was loaded, not a random init
    assert "refcoco/val" in result.stdout + result.stderr


@pytest.mark.parametrize("name, reader, splits", [
    ("davis", "RefDAVIS17", ["valid"]), ("ytvos", "RefYouTubeVOS", ["valid"]), ("mevis", "MeViS", ["valid_u", "valid"]),
])
def test_video_config_has_the_paper_settings(name, reader, splits, refam_here):
    result = refam_here("test", "--config", f"configs/{name}.yaml", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    extractor = config["model"]["extractor"]
    assert extractor["class_path"] == "refam.extractors.mochi.MochiExtractor"
    assert extractor["init_args"]["trajectory"]["init_args"]["sigma"] == 0.01  # "timestep 990" in Mochi's convention
    assert extractor["init_args"]["blocks"] is None and extractor["init_args"]["windows"] == "first"
    assert config["model"]["magnets"]["init_args"]["magnets"] == ["_", "with", "to", "and", "pink"]
    assert config["model"]["segmenter"]["class_path"] == "refam.segmenters.sam2_video.SAM2VideoSegmenter"
    assert config["model"]["segmenter"]["init_args"]["checkpoint"].endswith("sam2.1_hiera_large.pt")
    assert config["model"]["key_frame"] == "first"  # the paper prompts the first frame
    datasets = config["data"]["datasets"]
    datasets = datasets if isinstance(datasets, list) else [datasets]
    assert [d["class_path"].rsplit(".", 1)[1] for d in datasets] == [reader] * len(splits)
    assert [d["init_args"]["split"] for d in datasets] == splits
    assert all(d["init_args"]["captions_file"].endswith(f"{name}.json") for d in datasets)
    assert config["trainer"]["use_distributed_sampler"] is False
