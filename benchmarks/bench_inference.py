"""Inference speed and memory: the plain per-plane loop, the network alone, and the pipeline, side by side.

    python benchmarks/bench_inference.py              # all cases (a few minutes on 2 CPU cores)
    python benchmarks/bench_inference.py --quick      # fewer planes
    python benchmarks/bench_inference.py --cpu        # hide any GPU

In one process, on the same planes and model (the bundled 2D_demo / 3D_demo):

(a) plain: ``model.predict_instances`` once per plane, as a script would loop;
(b) floor: the network alone, in batches, called directly (no NMS, no reading);
(c) pipeline: ``stardist_host.segmentation.pipeline.predict_units`` (batched network,
    reading and NMS overlapped), which gives the labels of (a).

It prints planes per second for each, the ratios (a)/(c) (speed-up) and
(c)/(b) (distance from the floor), and the peak resident memory of segmenting
a TIFF stack through the TIFF image set for two stack sizes, one four times
the other, each in a fresh process.  With --huge GB it writes a synthetic
stack of that size plane by plane and segments it, printing time and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _planes(n: int, size: int) -> list[np.ndarray]:
    """``n`` different planes of ``size`` x ``size`` cut (and tiled) from stardist's 2D sample."""
    from stardist.data import test_image_nuclei_2d

    img = test_image_nuclei_2d()
    tiled = np.tile(img, (max(1, size // 512 + 1),) * 2)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, tiled.shape[0] - size + 1), rng.integers(0, tiled.shape[1] - size + 1)
        out.append(np.ascontiguousarray(tiled[y:y + size, x:x + size]))
    return out


def _norm(x):
    from csbdeep.utils import normalize

    return normalize(x, 1, 99.8, axis=None)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _objects_differing(a: np.ndarray, b: np.ndarray) -> int:
    """Objects of ``a`` that are not exactly one object of ``b`` (label numbers aside)."""
    fg = (a > 0) | (b > 0)
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    exact = [la for la in np.unique(pairs[0]) if la and (pairs[0] == la).sum() == 1
             and (pairs[1] == pairs[1][pairs[0] == la][0]).sum() == 1 and pairs[1][pairs[0] == la][0] != 0]
    return int(len(np.unique(a[a > 0])) - len(exact))


def compare(model, images: list[np.ndarray], label: str) -> dict:
    """Time (a) plain, (b) floor, (c) pipeline on the same images; check (c) gives (a)'s labels."""
    from stardist_host.segmentation.pipeline import BatchedPredictor, batch_limit, memory_budget, predict_units

    normed = [_norm(x) for x in images]
    predictor = BatchedPredictor(model)
    # warm up every path once, so that graph building is not timed
    model.predict_instances(normed[0], show_tile_progress=False)
    predictor.network([predictor.prepare(0, normed[0])])
    dict(predict_units(model, [0], lambda i: normed[i]))

    plain: list[np.ndarray] = []
    t_plain = _time(lambda: plain.extend(model.predict_instances(_norm(x), show_tile_progress=False)[0] for x in images))

    prepared = [predictor.prepare(i, x) for i, x in enumerate(normed)]
    batch = batch_limit(prepared[0].x.size, model.config.n_dim, memory_budget())  # as the pipeline batches
    t_floor = _time(lambda: [predictor.network(prepared[i:i + batch]) for i in range(0, len(prepared), batch)])

    piped: dict = {}
    t_pipe = _time(lambda: piped.update(predict_units(model, range(len(images)), lambda i: _norm(images[i]))))

    # batched convolutions round differently in the last bits, which can move a boundary pixel
    differ = sum(_objects_differing(plain[i], piped[i]) for i in range(len(images)))
    total = sum(len(np.unique(p)) - 1 for p in plain)
    n = len(images)
    row = {
        "case": label, "n": n, "batch": batch, "plain_per_s": n / t_plain, "floor_per_s": n / t_floor,
        "pipeline_per_s": n / t_pipe, "speedup_plain_over_pipeline": t_plain / t_pipe,
        "pipeline_over_floor": t_pipe / t_floor, "objects_differing": differ, "objects": total,
    }
    print(f"{label:>14} x{n:<4}: plain {row['plain_per_s']:6.2f}/s  floor {row['floor_per_s']:6.2f}/s  "
          f"pipeline {row['pipeline_per_s']:6.2f}/s  (a)/(c) {row['speedup_plain_over_pipeline']:.2f}x  "
          f"(c)/(b) {row['pipeline_over_floor']:.2f}  objects not identical to (a)'s: {differ} of {total}", flush=True)
    return row


def _write_stack(path: Path, n: int, size: int) -> None:
    """A TYX stack of ``n`` planes, written plane by plane (never held in memory)."""
    import tifffile

    base = _planes(16, size)
    tifffile.imwrite(path, data=(base[i % 16] for i in range(n)), shape=(n, size, size), dtype=np.uint16,
                     photometric="minisblack", bigtiff=True, metadata={"axes": "TYX"})


def rss_run(n: int, size: int, use_gpu: bool) -> dict:
    """In this (fresh) process: write an n-plane stack, segment it through the TIFF image set, report peak RSS."""
    from stardist_host import Settings, TiffImageSet
    from stardist_host.segmentation.segment import run

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        _write_stack(path, n, size)
        start = time.perf_counter()
        with TiffImageSet(path) as ims:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result = run(Settings(current_time_point=False, use_gpu=use_gpu), ims)
            ims.save(Path(tmp) / "out.ome.tif")
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"planes": n, "size": size, "nuclei": result.total, "seconds": seconds, "peak_rss_mb": peak_mb,
            "rss_before_run_mb": before / 1024}


def huge_run(gigabytes: float, size: int, use_gpu: bool) -> dict:
    """Write a stack of ``gigabytes`` plane by plane, segment it through the TIFF image set, report time and memory."""
    from stardist_host import Settings, TiffImageSet
    from stardist_host.segmentation.segment import run

    n = int(gigabytes * 2**30 // (size * size * 2))
    folder = Path(os.environ.get("STARDIST_HOST_BENCH_DIR", tempfile.gettempdir()))
    path, out = folder / "huge_stack.tif", folder / "huge_stack_labels.ome.tif"
    print(f"writing {n} planes of {size}x{size} ({gigabytes} GiB) to {path}", flush=True)
    _write_stack(path, n, size)
    start = time.perf_counter()
    with TiffImageSet(path, scratch_dir=folder) as ims:
        result = run(Settings(current_time_point=False, use_gpu=use_gpu), ims)
        ims.save(out)
    seconds = time.perf_counter() - start
    row = {"planes": n, "size": size, "gib": gigabytes, "nuclei": result.total, "seconds": seconds,
           "planes_per_s": n / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path.unlink()
    out.unlink()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer planes")
    p.add_argument("--cpu", action="store_true", help="hide any GPU")
    p.add_argument("--rss", type=int, nargs=2, metavar=("N", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--huge", type=float, metavar="GB", help="segment a synthetic stack of this many GiB")
    args = p.parse_args()

    from stardist_host.segmentation.device import configure_device

    device = configure_device(not args.cpu)
    if args.rss:
        print(json.dumps(rss_run(*args.rss, use_gpu=not args.cpu)))
        return
    if args.huge:
        print(json.dumps(huge_run(args.huge, 256, use_gpu=not args.cpu)))
        return

    import platform

    from stardist_host.segmentation.models import load_model

    print(f"device: {device}; {os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}")
    model2d, model3d = load_model("2D_demo", ndim=2), load_model("3D_demo", ndim=3)
    rows = [
        compare(model2d, _planes(64 if args.quick else 128, 256), "2D 256x256"),
        compare(model2d, _planes(4 if args.quick else 8, 1024), "2D 1024x1024"),
    ]
    from stardist.data import test_image_nuclei_3d

    volume = test_image_nuclei_3d()
    rows.append(compare(model3d, [np.roll(volume, 5 * i, axis=2) for i in range(4 if args.quick else 8)], "3D 31x61x57"))

    sizes = (64, 256) if not args.quick else (32, 128)
    mem = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss", str(n), "256"] + (["--cpu"] if args.cpu else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        mem.append(json.loads(out))
        print(f"{'memory':>22}: {n} planes of 256x256 through TiffImageSet: peak RSS {mem[-1]['peak_rss_mb']:.0f} MB "
              f"({mem[-1]['seconds']:.1f} s, {mem[-1]['nuclei']} nuclei)", flush=True)
    print(f"{'memory ratio':>22}: {mem[1]['peak_rss_mb'] / mem[0]['peak_rss_mb']:.3f} (4x the planes)")


if __name__ == "__main__":
    main()
