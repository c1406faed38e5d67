"""One engine, every way of running: seconds per plane of the plain headless run, a resumable run, a 1-worker Dask run.

All three go through the same engine (``segmentation/engine.py``, the batched
pipeline); the resumable run (``--resume``) and the Dask run (``--workers 1``)
write through a label store with a journal, the Dask run also hands its units
to a worker process in tasks.  Each figure is the marginal time per unit of the
whole command, ``(T(n units) - T(1 unit)) / (n - 1)``, so that start-up
(TensorFlow, the model, a Dask cluster) is left out: the shortest of ``--reps``
runs of each, the modes taking turns.
The target: the resumable and the 1-worker Dask run within 1.2x of the plain run.

    python benchmarks/bench_runs.py [--planes 192] [--size 256] [--volumes 3] [--reps 3] [--cpu]

Figures on a machine shared with other work are noisy: a Dask cluster's start-up
varies by a second from run to run, which the marginal spreads over n - 1 units.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_inference  # this folder is on the path of a script run from it

ROOT = Path(__file__).resolve().parents[1]
MODES = {"plain": [], "--resume": ["--resume"], "--workers 1": ["--workers", "1"]}


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def marginal(images, ndim: int, model: str, reps: int) -> dict[str, float]:
    """Seconds per unit of ``stardist-host segment`` in each mode, start-up left out.

    The modes take turns ``reps`` times, so that a slower spell of a shared
    machine falls on all of them alike; each mode's shortest run of 1 unit and
    of n units give its figure (start-up only ever adds time).
    """
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {n: Path(tmp) / f"in{n}.tif" for n in (1, len(images))}
        for n, path in inputs.items():
            bench_inference._write_units(path, images[:n])
        out = Path(tmp) / "out.ome.tif"
        for _ in range(reps):
            for mode, extra in MODES.items():
                for n, path in inputs.items():
                    times.setdefault((mode, n), []).append(_seconds([
                        sys.executable, "-m", "stardist_host.cli", "-q", "segment", str(path), str(out), "--dim",
                        str(ndim), "--all-time-points", "--model-name", model, "--overwrite", *extra]))
    n = len(images)
    return {mode: (min(times[mode, n]) - min(times[mode, 1])) / max(n - 1, 1) for mode in MODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=192, help="2D: planes (time points) per run (default 192)")
    parser.add_argument("--size", type=int, default=256, help="2D: plane size (default 256)")
    parser.add_argument("--volumes", type=int, default=3, help="3D: volumes (time points) per run (default 3)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every mode, taking turns (default 3)")
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
        seconds = marginal(images, ndim, model, args.reps)
        row = "  ".join(f"{mode} {s:.3f} s ({s / seconds['plain']:.2f}x)" for mode, s in seconds.items())
        print(f"{label}: per {'plane' if ndim == 2 else 'volume'}: {row}", flush=True)


if __name__ == "__main__":
    main()
