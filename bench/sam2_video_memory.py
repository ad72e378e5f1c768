"""Peak memory of SAM2 video propagation: sam2's own frame loader vs refam's lazy frame store.

    python bench/sam2_video_memory.py --frames 40 --image-size 256

Each method runs in a fresh process (tiny random-weight hiera-t on the CPU, one thread): a warm-up
propagation over 20 frames (so the memory attention runs with a full memory window and the
allocator has its pools), then the measured propagation over the whole video, prompted on frame 0.
A thread samples every 2 ms the bytes in use on the C heap (glibc `mallinfo2`: `uordblks + hblkhd`,
which counts every CPU tensor, as torch allocates them with malloc/posix_memalign, and no freed or
cached pages) and the process RSS; the figures are the peaks during the measured run minus the
values just before it. RSS is also reported but is noisy: freed warm-up memory comes back. sam2's
path is `init_state(video_path=folder)` + `propagate_in_video`; frames are DAVIS-sized JPEGs
(854 x 480). Prints one line per method and the ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
METHODS = ("sam2-init_state", "lazy-store", "lazy-store+prune")


def write_video(folder: Path, count: int, width: int = 854, height: int = 480) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    paths = []
    for t in range(count):
        pixels = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
        pixels[(xx - 200 - 8 * t) ** 2 + (yy - 240) ** 2 < 80**2] = (230, 60, 40)
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    """Bytes in use on the C heap: small/arena chunks plus mmap'd large chunks (glibc >= 2.33)."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    def __init__(self) -> None:
        self.heap_before = self.heap_peak = heap_bytes()
        self.rss_before = self.rss_peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.heap_peak = max(self.heap_peak, heap_bytes())
        self.rss_peak = max(self.rss_peak, rss_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def child(method: str, folder: Path, warm: Path, image_size: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from refam.segmenters import SAM2VideoSegmenter

    seg = SAM2VideoSegmenter(config=CONFIG, image_size=image_size, allow_random_weights=True,
                             prune_memory=method.endswith("prune"))
    seg.setup(torch.device("cpu"))
    predictor = seg.predictor
    point = (240.0, 240.0)

    def run(video: Path) -> int:
        if method == "sam2-init_state":
            state = predictor.init_state(video_path=str(video))
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=[list(point)], labels=[1])
            count = 0
            for _, _, logits in predictor.propagate_in_video(state):
                (logits[0, 0] > 0).cpu().numpy()
                count += 1
            del state
            return count
        frames = sorted(video.glob("*.jpg"))
        return sum(1 for _ in seg.track(frames, 0, point))

    run(warm)
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with PeakSampler() as sampler:
        count = run(folder)
    seconds = time.perf_counter() - start
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mb = 2**20
    return dict(method=method, frames=count, seconds=round(seconds, 1),
                heap_before_mb=sampler.heap_before / mb, heap_increase_mb=(sampler.heap_peak - sampler.heap_before) / mb,
                rss_before_mb=sampler.rss_before / mb, rss_increase_mb=(sampler.rss_peak - sampler.rss_before) / mb,
                maxrss_increase_mb=(maxrss_after - maxrss_before) / mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--child", choices=METHODS)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--warm", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.warm, args.image_size)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder, warm = Path(tmp) / "video", Path(tmp) / "warm"
        write_video(folder, args.frames)
        write_video(warm, 20)
        results = {}
        for method in METHODS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, "--folder", str(folder), "--warm", str(warm),
                 "--image-size", str(args.image_size)],
                check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
            ).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
            r = results[method]
            print(f"{method:18s} {r['frames']} frames at {args.image_size}px in {r['seconds']} s: "
                  f"peak heap in use +{r['heap_increase_mb']:.1f} MB over {r['heap_before_mb']:.0f} MB; "
                  f"peak RSS +{r['rss_increase_mb']:.1f} MB over {r['rss_before_mb']:.0f} MB "
                  f"(ru_maxrss +{r['maxrss_increase_mb']:.1f} MB)")
        base = results["sam2-init_state"]["heap_increase_mb"]
        frame_mb = 3 * args.image_size**2 * 4 / 2**20
        print(f"(one frame as sam2 holds it: {frame_mb:.2f} MB; {args.frames} frames: {args.frames * frame_mb:.1f} MB)")
        for method in METHODS[1:]:
            print(f"{method}: {results[method]['heap_increase_mb'] / base:.2f} x sam2's peak heap increase")


if __name__ == "__main__":
    main()
