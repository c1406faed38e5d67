"""Inference speed and memory: the plain per-plane loop, the network alone, the pipeline and the headless script.

    python benchmarks/bench_inference.py              # all cases (several minutes on 2 CPU cores)
    python benchmarks/bench_inference.py --quick      # fewer planes
    python benchmarks/bench_inference.py --smoke      # a handful of planes: checks that every part runs
    python benchmarks/bench_inference.py --cpu        # hide any GPU

In one run, on the same planes and model (the bundled 2D_demo / 3D_demo):

(a) plain: ``model.predict_instances`` once per plane, as a script would loop;
(b) floor: the network alone, in batches, called directly (no NMS, no reading);
(c) pipeline: ``stardist_host.segmentation.pipeline.predict_units`` (batched network,
    reading and NMS overlapped), which gives the labels of (a);
(d) headless: ``python -m stardist_host.cli segment`` on a TIFF of those planes, the
    whole process timed, for N planes and for 1: (T(N) - T(1)) / (N - 1) is the
    marginal cost of a plane, start-up and model loading aside;
GPU proxy: the network replaced by its stored outputs for the same planes, so that
    only the CPU side a GPU would wait on is timed: candidates, NMS and rendering
    on one thread in-process, and in 1 and 2 worker processes
    (:mod:`stardist_host.segmentation.nms_workers`).

It prints planes per second for each, the ratios (a)/(c) (speed-up),
(c)/(b) (distance from the floor), (d)/(c) (headless cost per plane over the
pipeline's), and 2 workers over 1 in the proxy; then the peak resident memory of segmenting
a TIFF stack through the TIFF image set for two stack sizes, one four times
the other, each in a fresh process.  With --huge GB it writes a synthetic
stack of that size plane by plane and segments it, printing time and memory.
"""

from __future__ import annotations

import argparse
import json
import logging
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
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes of the proxy's one-off predictors


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


def compare(model, images: list[np.ndarray], label: str, *, headless: bool = True) -> dict:
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
    marginal = headless_marginal(images, model.config.n_dim, model.name) if headless else float("nan")
    total = sum(len(np.unique(p)) - 1 for p in plain)
    n = len(images)
    row = {
        "case": label, "n": n, "batch": batch, "plain_per_s": n / t_plain, "floor_per_s": n / t_floor,
        "pipeline_per_s": n / t_pipe, "speedup_plain_over_pipeline": t_plain / t_pipe,
        "pipeline_over_floor": t_pipe / t_floor, "objects_differing": differ, "objects": total,
        "headless_per_s": 1 / marginal, "headless_over_pipeline": marginal / (t_pipe / n),
        "plain_over_headless": (t_plain / n) / marginal,
    }
    print(f"{label:>14} x{n:<4}: (a) plain {row['plain_per_s']:6.2f}/s  (b) floor {row['floor_per_s']:6.2f}/s  "
          f"(c) pipeline {row['pipeline_per_s']:6.2f}/s  (d) headless {row['headless_per_s']:6.2f}/s  "
          f"(a)/(c) {row['speedup_plain_over_pipeline']:.2f}x  (c)/(b) {row['pipeline_over_floor']:.2f}  "
          f"(d)/(c) {row['headless_over_pipeline']:.2f}  (a)/(d) {row['plain_over_headless']:.2f}x  "
          f"objects not identical to (a)'s: {differ} of {total}", flush=True)
    return row


def _write_units(path: Path, images: list[np.ndarray]) -> None:
    """The planes (TYX) or volumes (TZYX) as one uint16 TIFF, one time point each."""
    import tifffile

    axes = "TYX" if images[0].ndim == 2 else "TZYX"
    tifffile.imwrite(path, np.stack(images).astype(np.uint16), photometric="minisblack", metadata={"axes": axes})


def headless_marginal(images: list[np.ndarray], ndim: int, model_name: str) -> float:
    """Seconds per unit of the headless script, from whole-process times for all units and for one."""
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, len(images)):
            path = Path(tmp) / f"in{n}.tif"
            _write_units(path, images[:n])
            cmd = [sys.executable, "-m", "stardist_host.cli", "segment", str(path), str(Path(tmp) / f"out{n}.ome.tif"),
                   "--dim", str(ndim), "--all-time-points", "--model-name", model_name]
            cmd += ["--cpu"] if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else []
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            times[n] = time.perf_counter() - start
    return (times[len(images)] - times[1]) / max(len(images) - 1, 1)


def gpu_proxy(model, images: list[np.ndarray], label: str) -> dict:
    """Post-processing alone, on the network's stored outputs for ``images``: what a GPU would wait on."""
    from stardist_host.segmentation import stardist_compat as compat
    from stardist_host.segmentation.nms_workers import NmsPool
    from stardist_host.segmentation.pipeline import BatchedPredictor

    predictor = BatchedPredictor(model)
    prepared = [predictor.prepare(i, _norm(x)) for i, x in enumerate(images)]
    outputs = [predictor.network([p])[0] for p in prepared]  # the real network's outputs, stored
    n = len(images)
    t_thread = _time(lambda: [predictor.instances(p, *o) for p, o in zip(prepared, outputs)])
    row = {"case": label, "n": n, "thread_per_s": n / t_thread}
    for workers in (1, 2):
        start = time.perf_counter()
        with NmsPool(compat.nms_config(model), workers=workers) as pool:
            [f.result() for f in pool.warm_up()]
            startup = time.perf_counter() - start
            [predictor.submit_to(pool, prepared[0], *outputs[0]).result() for _ in range(workers)]  # first calls
            window: list = []  # as the pipeline: a bounded number of units in flight
            start = time.perf_counter()
            for p, o in zip(prepared, outputs):
                window.append(predictor.submit_to(pool, p, *o))
                if len(window) >= 2 * workers + 2:
                    window.pop(0).result()
            [f.result() for f in window]
            row[f"workers{workers}_per_s"] = n / (time.perf_counter() - start)
            row[f"workers{workers}_startup_s"] = startup
    row["two_over_one"] = row["workers2_per_s"] / row["workers1_per_s"]
    print(f"{label:>14} x{n:<4}: GPU proxy (stored network outputs): 1 thread {row['thread_per_s']:6.2f}/s  "
          f"1 worker {row['workers1_per_s']:6.2f}/s  2 workers {row['workers2_per_s']:6.2f}/s  "
          f"2/1 workers {row['two_over_one']:.2f}x  (start-up {row['workers2_startup_s']:.1f} s)", flush=True)
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
    p.add_argument("--smoke", action="store_true", help="a handful of planes: checks that every part runs")
    p.add_argument("--no-headless", action="store_true", help="skip (d), the headless script end to end")
    p.add_argument("--cpu", action="store_true", help="hide any GPU")
    p.add_argument("--rss", type=int, nargs=2, metavar=("N", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--huge", type=float, metavar="GB", help="segment a synthetic stack of this many GiB")
    p.add_argument("--case", choices=("256", "1024", "3d"), action="append",
                   help="run only this case (repeatable); default all three, then the memory check")
    p.add_argument("--planes", type=int, metavar="N", help="planes (volumes) per case instead of the default")
    args = p.parse_args()

    from stardist_host.segmentation.device import configure_device

    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # for the headless processes too
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
    from stardist.data import test_image_nuclei_3d

    counts = (8, 2, 2) if args.smoke else (64, 4, 4) if args.quick else (128, 8, 8)
    if args.planes:
        counts = (args.planes,) * 3
    volume = test_image_nuclei_3d()
    cases = {"256": (model2d, lambda: _planes(counts[0], 256), "2D 256x256"),
             "1024": (model2d, lambda: _planes(counts[1], 1024), "2D 1024x1024"),
             "3d": (model3d, lambda: [np.roll(volume, 5 * i, axis=2) for i in range(counts[2])], "3D 31x61x57")}
    for name in args.case or cases:
        model, make, label = cases[name]
        images = make()
        compare(model, images, label, headless=not args.no_headless)
        gpu_proxy(model, images, label)
    if args.case:
        return

    sizes = (64, 256) if not (args.quick or args.smoke) else (32, 128)
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
