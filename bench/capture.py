"""What the expression branch costs: time and memory of one forward with the branch and capture
against the plain forward, and K expressions in one forward against one.

    python bench/capture.py                      # tiny FLUX and refam-shapes, CPU
    python bench/capture.py --repeats 30 --threads 1
    python bench/capture.py --cases flux-dev-blocks --repeats 3 --threads 2   # FLUX.1-dev's block width, 1024²

Prints, per model and image size, measured in one run (interleaved, medians):
  (a) capture overhead   = forward with branch + capture (K=1) / plain forward          (target <= 1.15)
      "of which tokens only" = the K=1 expression tokens passed as caption tokens, no branch / plain
  (b) expression scaling = one forward with K=8 expressions / one with K=1              (target <= 1.5)
  (c) peak memory        = peak with branch + capture (K=1) / peak of the plain forward (target <= 1.05)
Memory is the C heap in use (glibc mallinfo2, which counts every CPU tensor), sampled every 0.5 ms
during the forward: "total" includes the weights, as a GPU's max_memory_allocated would; "above
weights" is the increment over the level before the forward.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
from refam.embedded import REFAM_SHAPES  # noqa: E402
sys.path.insert(0, str(ROOT))

EXPRESSIONS = ["the red circle on the left", "a blue square", "the green triangle at the top", "the small yellow circle",
               "the object on the right", "a big purple square", "the circle below the square", "the black triangle"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def peak_heap(run) -> tuple[int, int]:
    """(level before, peak during) of the C heap while `run()` executes."""
    before = heap_bytes()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], heap_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run()
    finally:
        stop.set()
        thread.join()
    return before, max(peak[0], heap_bytes())


# FLUX.1-dev's blocks (3072 wide, 24 heads of 128, MLP ratio 4) with random weights, one double and
# one single block, its 512-token caption; the text encoders and VAE are the tiny ones (they are
# outside the forward that is timed)
FLUX_DEV_BLOCKS = dict(width=3072, heads=24, double_blocks=1, single_blocks=1)


def setup(folder: str, resolution: int, pooled_prompt: str, caption_tokens: int = 32):
    from refam.aggregators.magnets import AppendMagnets
    from refam.extractors.flux import FluxExtractor

    extractor = FluxExtractor(folder, torch_dtype="float32", resolution=resolution, caption_max_tokens=caption_tokens,
                              pooled_prompt=pooled_prompt)
    if folder == "flux-dev-blocks":
        from refam.testing.tiny_flux import build_tiny_flux

        extractor.use_pipeline(build_tiny_flux(**FLUX_DEV_BLOCKS), torch.device("cpu"))
    else:
        extractor.setup(torch.device("cpu"))
    image = Image.new("RGB", (resolution, resolution), (90, 140, 200))
    latent = extractor.encode_image(image)
    x_t = 0.25 * latent.x0 + 0.75 * torch.randn(latent.x0.shape, generator=torch.Generator().manual_seed(0))
    condition = extractor.encode_caption("a red circle and a blue square")
    magnets = AppendMagnets()
    encoded = {k: extractor.encode_expressions([magnets.augment(e) for e in EXPRESSIONS[:k]]) for k in (1, 8)}
    return extractor, x_t, latent.grid, condition, encoded


def measure(folder: str, resolution: int, pooled_prompt: str, repeats: int, caption_tokens: int = 32) -> dict:
    from refam.extractors.flux import CaptionCondition

    extractor, x_t, grid, condition, encoded = setup(folder, resolution, pooled_prompt, caption_tokens)

    def plain():
        extractor.forward(x_t, 0.75, grid, condition)

    def branch(k: int):
        def run():
            capture = extractor.new_capture(encoded[k], condition, grid)
            extractor.forward(x_t, 0.75, grid, condition, encoded[k], capture)
            capture.result()
        return run

    # the same K=1 tokens as caption tokens, no branch: what the expression tokens cost by passing
    # through the blocks' norms and MLPs, which the method needs (the branch's own share is the rest)
    longer = CaptionCondition(torch.cat([encoded[1].embeds.reshape(1, -1, condition.embeds.shape[-1]), condition.embeds], 1),
                              condition.pooled, condition.guidance)

    def tokens_only():
        extractor.forward(x_t, 0.75, grid, longer)

    runs = {"plain": plain, "tokens": tokens_only, "k1": branch(1), "k8": branch(8)}
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():  # interleaved, so machine noise hits all three alike
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    memory = {name: peak_heap(run) for name, run in (("plain", plain), ("k1", runs["k1"]))}
    median = {name: statistics.median(values) for name, values in times.items()}
    (plain_before, plain_peak), (k1_before, k1_peak) = memory["plain"], memory["k1"]
    return {
        "tokens": math.prod(grid),
        "blocks": extractor.num_blocks,
        "plain_ms": 1000 * median["plain"],
        "k1_ms": 1000 * median["k1"],
        "k8_ms": 1000 * median["k8"],
        "overhead": median["k1"] / median["plain"],
        "tokens_share": median["tokens"] / median["plain"],
        "scaling": median["k8"] / median["k1"],
        "memory_total": k1_peak / plain_peak,
        "memory_above_weights": (k1_peak - k1_before) / max(plain_peak - plain_before, 1),
        "plain_peak_mb": plain_peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", choices=["toys", "flux-dev-blocks"], default="toys",
                        help="the tiny models, or FLUX.1-dev's full-width blocks (random weights; ~20 s a forward "
                             "at 1024² on 2 CPU cores)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1024], help="for --cases flux-dev-blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    toys = [("tiny FLUX", str(ROOT / "assets/smoke/tiny-flux"), 256, "caption", 32),
            ("refam-shapes", str(REFAM_SHAPES), 128, "empty", 32),
            ("refam-shapes", str(REFAM_SHAPES), 512, "empty", 32)]
    flux_dev = [("FLUX.1-dev blocks (1 double + 1 single)", "flux-dev-blocks", resolution, "caption", 512)
                for resolution in args.resolutions]
    cases = toys if args.cases == "toys" else flux_dev
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} interleaved repeats, medians\n")
    print("| model | image tokens | blocks | plain ms | K=1 ms | K=8 ms | (a) overhead | of which tokens only | (b) K=8/K=1 | (c) peak total | (c) above weights |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, folder, resolution, pooled, caption_tokens in cases:
        r = measure(folder, resolution, pooled, args.repeats, caption_tokens)
        print(f"| {name} {resolution}² | {r['tokens']} | {r['blocks']} | {r['plain_ms']:.1f} | {r['k1_ms']:.1f} | "
              f"{r['k8_ms']:.1f} | {r['overhead']:.2f} | {r['tokens_share']:.2f} | {r['scaling']:.2f} | {r['memory_total']:.3f} | "
              f"{r['memory_above_weights']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
