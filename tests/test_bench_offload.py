"""bench/offload.py: its FLUX.1-dev is the published architecture, its arithmetic is the modes'
placement, and its measuring path runs (on the tiny architecture; timings are the bench's job)."""

import math

import pytest
import torch



@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("offload")


def test_flux_dev_sizes_are_the_published_ones(bench, capsys):
    table = bench.sizes_table(forwards=1, bandwidth=25.0)
    params, size = table["params"], table["size"]
    # FLUX.1-dev's transformer is "a 12 billion parameter rectified flow transformer"; T5 v1.1 XXL's encoder 4.76 B
    assert 11.8e9 < params["transformer"] < 12.0e9
    assert 4.70e9 < params["text_encoder_2"] < 4.80e9
    assert 0.12e9 < params["text_encoder"] < 0.13e9
    assert all(size[name] >= 2 * params[name] for name in params)  # bf16, buffers on top
    resident, copied = table["resident"], table["copied"]
    assert resident["none"] == sum(size.values())
    assert resident["model"] == max(size["text_encoder"] + size["text_encoder_2"], size["transformer"]) + size["vae"]
    assert resident["group"] < size["transformer"] / 10  # about two blocks at a time
    assert copied["none"] == copied["text_encoders"] == 0
    assert copied["group"] > copied["model"]  # every forward streams the transformer again; T5 runs twice
    assert "| group |" in capsys.readouterr().out


def test_the_measuring_path_runs_every_mode_on_the_tiny_architecture(bench):
    rows = bench.measure("tiny", ["none", "model", "group"], resolution=64, repeats=1, device=torch.device("cpu"))
    assert [row["mode"] for row in rows] == ["none", "model", "group"]
    for row in rows:
        assert row["k1_s"] > 0 and row["k8_s"] > 0
        assert math.isnan(row["k1_peak_gb"])  # peak memory is read on CUDA only
