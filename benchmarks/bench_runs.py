"""One engine, every way of running: seconds per plane of the plain headless run, a resumable run, a 1-worker Dask run.

All three go through the same engine (``segmentation/engine.py``, the batched
pipeline); the resumable run (``--resume``) and the Dask run (``--workers 1``)
write through a label store with a journal, the Dask run also hands its units
to a worker process in tasks.  Each figure is the marginal time per unit of the
whole command, ``(T(n units) - T(1 unit)) / (n - 1)``, the shorter of two runs
each, so that start-up (TensorFlow, the model, a Dask cluster) is left out.
The target: the resumable and the 1-worker Dask run within 1.2x of the plain run.

    python benchmarks/bench_runs.py [--planes 32] [--size 256] [--volumes 4] [--cpu]

Figures on a machine shared with other work are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_inference  # this folder is on the path of a script run from it

ROOT = Path(__file__).resolve().parents[1]
MODES = {"plain": [], "--resume": ["--resume"], "--workers 1": ["--workers", "1"]}


def marginal(images, ndim: int, model: str, extra: list[str]) -> float:
    """Seconds per unit of ``stardist-host segment`` with ``extra`` options, start-up left out."""
    times: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, len(images)) * 2:
            path = Path(tmp) / f"in{n}.tif"
            if not path.exists():
                bench_inference._write_units(path, images[:n])
            out = Path(tmp) / f"out{n}.ome.tif"
            cmd = [sys.executable, "-m", "stardist_host.cli", "-q", "segment", str(path), str(out), "--dim", str(ndim),
                   "--all-time-points", "--model-name", model, "--overwrite", *extra]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            times[n] = min(times.get(n, math.inf), time.perf_counter() - start)
            out.unlink()
    return (times[len(images)] - times[1]) / max(len(images) - 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=32, help="2D: planes (time points) per run (default 32)")
    parser.add_argument("--size", type=int, default=256, help="2D: plane size (default 256)")
    parser.add_argument("--volumes", type=int, default=4, help="3D: volumes (time points) per run (default 4)")
    parser.add_argument("--cpu", action="store_true", help="hide any GPU")
    args = parser.parse_args()
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from stardist.data import test_image_nuclei_3d

    volume = test_image_nuclei_3d()
    cases = [
        (f"2D {args.size}x{args.size} x{args.planes}", 2, "2D_demo", bench_inference._planes(args.planes, args.size)),
        (f"3D {'x'.join(map(str, volume.shape))} x{args.volumes}", 3, "3D_demo",
         [volume] * args.volumes),
    ]
    for label, ndim, model, images in cases:
        seconds = {mode: marginal(images, ndim, model, extra) for mode, extra in MODES.items()}
        plain = seconds["plain"]
        row = "  ".join(f"{mode} {s:.3f} s ({s / plain:.2f}x)" for mode, s in seconds.items())
        print(f"{label}: per {'plane' if ndim == 2 else 'volume'}: {row}", flush=True)


if __name__ == "__main__":
    main()
