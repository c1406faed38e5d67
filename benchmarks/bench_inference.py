"""Inference speed and memory: the plain per-plane loop, the network alone, the pipeline and the headless script.

    python benchmarks/bench_inference.py              # all cases (several minutes on 2 CPU cores)
    python benchmarks/bench_inference.py --quick      # fewer planes
    python benchmarks/bench_inference.py --smoke      # a handful of planes: checks that every part runs
    python benchmarks/bench_inference.py --cpu        # hide any GPU

In one run, on the same planes and model (the bundled 2D_demo / 3D_demo):

(a) plain: ``model.predict_instances`` once per plane in float32, as a script would loop;
(b) floor: the network alone, in batches, called directly (no NMS, no reading);
(c) pipeline: ``stardist_host.segmentation.pipeline.predict_units`` (batched network,
    reading and NMS overlapped), which gives the labels of (a);
(d) headless: ``python -m stardist_host.cli segment`` on a TIFF of those planes, the
    whole process timed (the shorter of two runs), for N planes and for 1:
    (T(N) - T(1)) / (N - 1) is the marginal cost of a plane, start-up and model
    loading aside;
(b)-(d) each in float32 and in mixed precision (PRECISION="mixed" for (b) and (c),
    the default "auto" for (d)), with the objects of mixed matched to those of float32
    (F1 at IoU 0.5); the CPU's bfloat16 flags are printed first;
GPU proxy: the network replaced by its stored outputs for the same planes, so that
    only the CPU side a GPU would wait on is timed: candidates, NMS and rendering
    on one thread in-process, and in worker processes
    (:mod:`stardist_host.segmentation.nms_workers`): 1 and 2 workers with one
    OpenMP thread each (what processes add), and 1 worker with every core's threads
    (what stardist's own OpenMP loops already get from the cores).

It prints planes per second for each, the ratios (a)/(c) (speed-up),
(c)/(b) (distance from the floor), (d)/(c) (headless cost per plane over the
pipeline's), and 2 workers over 1 in the proxy; then the peak resident memory of segmenting
a TIFF stack through the TIFF image set for two stack sizes, one four times
the other, each in a fresh process.  With --huge GB it writes a synthetic
stack of that size plane by plane and segments it, printing time and memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import shutil
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


def _f1(truth: list[np.ndarray], predicted: list[np.ndarray]) -> float:
    from stardist.matching import matching_dataset

    return float(matching_dataset(truth, predicted, thresh=0.5, show_progress=False).f1)


def compare(model, images: list[np.ndarray], label: str, *, marginal: dict[str, float]) -> dict:
    """Time (a) plain in float32, then (b) floor and (c) pipeline in each precision, on the same images.

    Checks that (c) in float32 gives (a)'s labels (up to boundary pixels) and
    matches mixed's objects to float32's.  ``marginal`` is (d) per precision,
    from :func:`headless_marginal`, measured before this process started TensorFlow.
    """
    from stardist_host.segmentation.precision import configure_precision

    configure_precision("float32")
    model.predict_instances(_norm(images[0]), show_tile_progress=False)  # graph building is not timed
    plain: list[np.ndarray] = []
    t_plain = _time(lambda: plain.extend(model.predict_instances(_norm(x), show_tile_progress=False)[0] for x in images))
    n = len(images)
    print(f"{label:>14} x{n:<4}: (a) plain float32 {n / t_plain:6.2f}/s", flush=True)
    rows, labels = {}, {}
    for choice in ("float32", "mixed"):
        dtype = configure_precision(choice)
        rows[dtype], labels[dtype] = _precision_case(model, images, label, t_plain, plain, dtype,
                                                     marginal["float32" if choice == "float32" else "auto"])
    if len(rows) > 1:  # mixed ran in a 16-bit type: its objects against float32's
        (f32, mixed), keys = labels.values(), list(rows)
        f1 = _f1(list(f32.values()), [mixed[i] for i in f32])
        both = {"case": label, "f1_mixed_vs_float32": f1,
                "headless_mixed_over_float32": rows[keys[0]]["headless_s"] / rows[keys[1]]["headless_s"],
                "pipeline_mixed_over_float32": rows[keys[1]]["pipeline_per_s"] / rows[keys[0]]["pipeline_per_s"]}
        print(f"{label:>14} x{n:<4}: {keys[1]} vs float32: objects F1@0.5 {f1:.4f}  (c) {both['pipeline_mixed_over_float32']:.2f}x  "
              f"(d) {both['headless_mixed_over_float32']:.2f}x", flush=True)
        rows["both"] = both
    return rows


def _precision_case(model, images, label, t_plain, plain, dtype, marginal) -> tuple[dict, dict]:
    """(b) and (c) in the precision that is set (``dtype``), and the ratios to (a) and (d)."""
    from stardist_host.segmentation.pipeline import BatchedPredictor, batch_limit, memory_budget, predict_units

    normed = [_norm(x) for x in images]
    predictor = BatchedPredictor(model)  # a compiled network of its own, built in this precision
    # warm up every path once, so that graph building is not timed
    predictor.network([predictor.prepare(0, normed[0])])
    dict(predict_units(model, [0], lambda i: normed[i]))

    prepared = [predictor.prepare(i, x) for i, x in enumerate(normed)]
    batch = batch_limit(prepared[0].x.size, model.config.n_dim, memory_budget())  # as the pipeline batches
    t_floor = _time(lambda: [predictor.network(prepared[i:i + batch]) for i in range(0, len(prepared), batch)])

    def pipeline(**options) -> tuple[float, dict]:
        out: dict = {}
        return _time(lambda: out.update(predict_units(model, range(len(images)), lambda i: _norm(images[i]),
                                                      **options))), out

    with gpu_busy() as busy:  # as segmentation runs it: NMS workers started when the first units show they pay
        t_pipe, piped = pipeline()
    # the two splits of the cores it chooses between: NMS on threads only, in worker processes from the start
    # (their start-up included)
    (t_threads, by_threads), (t_procs, by_procs) = pipeline(nms_processes=False), pipeline(nms_processes=True)
    assert all(np.array_equal(piped[i], by_threads[i]) and np.array_equal(piped[i], by_procs[i]) for i in piped)

    # batched convolutions round differently in the last bits, which can move a boundary pixel
    differ = sum(_objects_differing(plain[i], piped[i]) for i in range(len(images)))
    total = sum(len(np.unique(p)) - 1 for p in plain)
    n = len(images)
    row = {
        "case": label, "precision": dtype, "n": n, "batch": batch, "plain_per_s": n / t_plain,
        "floor_per_s": n / t_floor, "headless_s": marginal, "f1_vs_plain": _f1(plain, [piped[i] for i in range(n)]),
        "pipeline_per_s": n / t_pipe, "pipeline_threads_per_s": n / t_threads, "pipeline_processes_per_s": n / t_procs,
        "speedup_plain_over_pipeline": t_plain / t_pipe,
        "pipeline_over_floor": t_pipe / t_floor, "objects_differing": differ, "objects": total,
        "headless_per_s": 1 / marginal, "headless_over_pipeline": marginal / (t_pipe / n),
        "plain_over_headless": (t_plain / n) / marginal,
    }
    print(f"{label:>14} x{n:<4}: {dtype:>8}: (b) floor {row['floor_per_s']:6.2f}/s  "
          f"(c) pipeline {row['pipeline_per_s']:6.2f}/s (NMS on threads {row['pipeline_threads_per_s']:6.2f}/s, "
          f"in processes {row['pipeline_processes_per_s']:6.2f}/s)  "
          f"(d) headless {row['headless_per_s']:6.2f}/s  "
          f"(a)/(c) {row['speedup_plain_over_pipeline']:.2f}x  (c)/(b) {row['pipeline_over_floor']:.2f}  "
          f"(d)/(c) {row['headless_over_pipeline']:.2f}  (a)/(d) {row['plain_over_headless']:.2f}x  "
          f"objects not identical to (a)'s: {differ} of {total} (F1@0.5 {row['f1_vs_plain']:.4f})"
          + (f"  GPU busy during (c): {np.mean(busy):.0f}%" if busy else ""), flush=True)
    row["gpu_busy_percent"] = float(np.mean(busy)) if busy else math.nan
    return row, piped


@contextlib.contextmanager
def gpu_busy():
    """Samples of the GPU's utilisation (percent, every 0.2 s, from ``nvidia-smi``) while the block runs;
    none where no NVIDIA GPU is visible."""
    samples: list[float] = []
    smi = shutil.which("nvidia-smi")
    if smi is None or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        yield samples
        return
    cmd = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as smi_run:
        try:
            yield samples
        finally:
            smi_run.terminate()
            out = smi_run.communicate()[0]
    samples.extend(float(v) for v in out.split() if v.replace(".", "", 1).isdigit())


def _write_units(path: Path, images: list[np.ndarray]) -> None:
    """The planes (TYX) or volumes (TZYX) as one uint16 TIFF, one time point each."""
    import tifffile

    axes = "TYX" if images[0].ndim == 2 else "TZYX"
    tifffile.imwrite(path, np.stack(images).astype(np.uint16), photometric="minisblack", metadata={"axes": axes})


def headless_marginal(images: list[np.ndarray], ndim: int, model_name: str, precision: str = "auto") -> float:
    """Seconds per unit of the headless script, from whole-process times for all units and for one.

    Each is the shorter of two runs.  :func:`main` measures this first, before
    this process loads TensorFlow and runs (a)-(c): a process started after
    those took up to a quarter more CPU time for the same work (``getrusage``:
    13.1 against 10.4 s), persistently, which would be charged to the headless path.
    """
    times: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, len(images)) * 2:
            path = Path(tmp) / f"in{n}.tif"
            if not path.exists():
                _write_units(path, images[:n])
            cmd = [sys.executable, "-m", "stardist_host.cli", "segment", str(path), str(Path(tmp) / f"out{n}.ome.tif"),
                   "--dim", str(ndim), "--all-time-points", "--model-name", model_name, "--overwrite",
                   "--precision", precision]
            cmd += ["--cpu"] if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else []
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            times[n] = min(times.get(n, math.inf), time.perf_counter() - start)
    return (times[len(images)] - times[1]) / max(len(images) - 1, 1)


def proxy_configs(cores: int) -> list[tuple[int, int]]:
    """(worker processes, OpenMP threads each) the proxy times: one and two workers on one thread each,
    one worker given every core's threads, and on bigger machines one worker per core."""
    configs = [(1, 1), (2, 1), (1, cores)]
    if cores > 2:
        configs += [(cores // 2, 2), (cores, 1)]
    return list(dict.fromkeys(configs))


def gpu_proxy(model, images: list[np.ndarray], label: str) -> dict:
    """Post-processing alone, on the network's stored outputs for ``images``: what a GPU would wait on."""
    from stardist_host.segmentation import stardist_compat as compat
    from stardist_host.segmentation.nms_workers import NmsPool, available_cores
    from stardist_host.segmentation.pipeline import BatchedPredictor

    predictor = BatchedPredictor(model)
    prepared = [predictor.prepare(i, _norm(x)) for i, x in enumerate(images)]
    outputs = [predictor.network([p])[0] for p in prepared]  # the real network's outputs, stored
    n, cores = len(images), available_cores()
    t_thread = _time(lambda: [predictor.instances(p, *o) for p, o in zip(prepared, outputs)])
    row = {"case": label, "n": n, "cores": cores, "in_process_per_s": n / t_thread}
    for workers, threads in proxy_configs(cores):
        start = time.perf_counter()
        with NmsPool(compat.nms_config(model), workers=workers, threads=threads) as pool:
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
            row[f"w{workers}x{threads}_per_s"] = n / (time.perf_counter() - start)
            row[f"w{workers}x{threads}_startup_s"] = startup
    row["two_over_one"] = row["w2x1_per_s"] / row["w1x1_per_s"]
    row["two_over_openmp"] = row["w2x1_per_s"] / row[f"w1x{cores}_per_s"]
    configs = "  ".join(f"{w}x{t} {row[f'w{w}x{t}_per_s']:6.2f}/s" for w, t in proxy_configs(cores))
    print(f"{label:>14} x{n:<4}: GPU proxy (stored network outputs; workers x OpenMP threads): "
          f"in-process {row['in_process_per_s']:6.2f}/s  {configs}  2x1/1x1 {row['two_over_one']:.2f}x  "
          f"2x1/1x{cores} {row['two_over_openmp']:.2f}x  (start-up {row['w2x1_startup_s']:.1f} s)", flush=True)
    return row


def _write_stack(path: Path, n: int, size: int) -> None:
    """A TYX stack of ``n`` planes, written plane by plane (never held in memory)."""
    import tifffile

    base = _planes(16, size)
    tifffile.imwrite(path, data=(base[i % 16] for i in range(n)), shape=(n, size, size), dtype=np.uint16,
                     photometric="minisblack", bigtiff=True, metadata={"axes": "TYX"})


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM where Linux gives it, else ``ru_maxrss``.

    On Linux ``ru_maxrss`` survives ``fork`` and ``exec``: a child of this
    benchmark would report at least this (large) process's size at the fork.
    VmHWM belongs to the program the child now runs.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def rss_run(n: int, size: int, use_gpu: bool, precision: str = "auto") -> dict:
    """In this (fresh) process: write an n-plane stack, segment it through the TIFF image set, report peak RSS."""
    from stardist_host import Settings, TiffImageSet
    from stardist_host.runs.local import run

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        _write_stack(path, n, size)
        start = time.perf_counter()
        with TiffImageSet(path) as ims:
            before = peak_rss_mb()
            result = run(Settings(current_time_point=False, use_gpu=use_gpu, precision=precision), ims)
            ims.save(Path(tmp) / "out.ome.tif")
        seconds = time.perf_counter() - start
    return {"planes": n, "size": size, "nuclei": result.total, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "rss_before_run_mb": before, "precision": result.precision}


def huge_run(gigabytes: float, size: int, use_gpu: bool) -> dict:
    """Write a stack of ``gigabytes`` plane by plane, segment it through the TIFF image set, report time and memory."""
    from stardist_host import Settings, TiffImageSet
    from stardist_host.runs.local import run

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
           "planes_per_s": n / seconds, "peak_rss_mb": peak_rss_mb()}
    path.unlink()
    out.unlink()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer planes")
    p.add_argument("--smoke", action="store_true", help="a handful of planes: checks that every part runs")
    p.add_argument("--no-headless", action="store_true", help="skip (d), the headless script end to end")
    p.add_argument("--cpu", action="store_true", help="hide any GPU")
    p.add_argument("--rss", nargs=3, metavar=("N", "SIZE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--huge", type=float, metavar="GB", help="segment a synthetic stack of this many GiB")
    p.add_argument("--case", choices=("256", "1024", "3d"), action="append",
                   help="run only this case (repeatable); default all three, then the memory check")
    p.add_argument("--planes", type=int, metavar="N", help="planes (volumes) per case instead of the default")
    p.add_argument("--compete", action="store_true",
                   help="keep one core busy with a second process throughout, as another user's job would")
    p.add_argument("--tf-threads", type=int, metavar="N",
                   help="TensorFlow's intra-op threads (default: one per core), to measure other splits of the cores")
    args = p.parse_args()
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # for the headless processes too
    if args.rss or args.huge:
        from stardist_host.segmentation.device import configure_device

        configure_device(not args.cpu)
        print(json.dumps(rss_run(int(args.rss[0]), int(args.rss[1]), not args.cpu, args.rss[2]) if args.rss else
                         huge_run(args.huge, 256, use_gpu=not args.cpu)))
        return
    # with --compete, a second process keeps one core busy for the whole run, (a)-(d) alike
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.compete else None
    try:
        _cases(args)
    finally:
        if rival is not None:
            rival.kill()


def _cases(args) -> None:
    """The cases of ``args`` ((d) first for each), then the memory check."""
    from stardist.data import test_image_nuclei_3d  # no TensorFlow yet

    counts = (8, 2, 2) if args.smoke else (64, 8, 4) if args.quick else (128, 24, 8)
    if args.planes:
        counts = (args.planes,) * 3
    volume = test_image_nuclei_3d()
    cases = {"256": (2, lambda: _planes(counts[0], 256), "2D 256x256"),
             "1024": (2, lambda: _planes(counts[1], 1024), "2D 1024x1024"),
             "3d": (3, lambda: [np.roll(volume, 5 * i, axis=2) for i in range(counts[2])], "3D 31x61x57")}
    names = args.case or list(cases)
    images = {name: cases[name][1]() for name in names}
    # (d) first, while this process is light (see headless_marginal)
    marginal = {name: {p: math.nan if args.no_headless else
                       headless_marginal(images[name], cases[name][0], f"{cases[name][0]}D_demo", p)
                       for p in ("float32", "auto")} for name in names}

    if args.tf_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
    import platform

    from stardist_host.segmentation.device import configure_device
    from stardist_host.segmentation.models import load_model
    from stardist_host.segmentation.precision import BF16_FLAGS, _cpu_flags, cpu_support

    device = configure_device(not args.cpu)
    flags = _cpu_flags("/proc/cpuinfo") or set()
    print(f"CPU bfloat16 flags: {', '.join(sorted(flags & set(BF16_FLAGS))) or 'none'}; {cpu_support().reason}")
    print(f"device: {device}; {os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}"
          + (f"; TensorFlow intra-op threads {args.tf_threads} ((d) with the default)" if args.tf_threads else "")
          + ("; a second process keeps one core busy" if args.compete else ""))
    models = {2: load_model("2D_demo", ndim=2), 3: load_model("3D_demo", ndim=3)}
    for name in names:
        ndim, _, label = cases[name]
        rows = compare(models[ndim], images[name], label, marginal=marginal[name])
        proxy = gpu_proxy(models[ndim], images[name], label)
        _ceiling(rows, proxy, label)
    if args.case:
        return

    sizes = (64, 256) if not (args.quick or args.smoke) else (32, 128)
    mem = {}
    for precision in ("float32", "auto"):
        for n in sizes:
            cmd = [sys.executable, __file__, "--rss", str(n), "256", precision] + (["--cpu"] if args.cpu else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got = mem[precision, n] = json.loads(out)
            print(f"{'memory':>22}: {n} planes of 256x256 through TiffImageSet in {got['precision']}: peak RSS "
                  f"{got['peak_rss_mb']:.0f} MB ({got['seconds']:.1f} s, {got['nuclei']} nuclei)", flush=True)
    for precision in ("float32", "auto"):
        ratio = mem[precision, sizes[1]]["peak_rss_mb"] / mem[precision, sizes[0]]["peak_rss_mb"]
        print(f"{'memory ratio':>22}: {ratio:.3f} (4x the planes, {mem[precision, sizes[0]]['precision']})")
    print(f"{'memory ratio':>22}: {mem['auto', sizes[1]]['peak_rss_mb'] / mem['float32', sizes[1]]['peak_rss_mb']:.3f} "
          f"(PRECISION auto over float32, {sizes[1]} planes)")


def _ceiling(rows: dict, proxy: dict, label: str) -> None:
    """What the fastest precision's network and NMS allow, against the plain float32 loop.

    On a CPU the network and NMS each use every core, so they add up rather than
    overlap: the ceiling of (d) over (a) is (a) / ((b) + NMS alone), with NMS alone
    from the proxy's in-process run.  With NMS free, (a) / (b) would be the bound.
    """
    fast = rows[[k for k in rows if k != "both"][-1]]
    t_plain, t_net, t_nms = 1 / fast["plain_per_s"], 1 / fast["floor_per_s"], 1 / proxy["in_process_per_s"]
    print(f"{label:>14}       : ceiling of {fast['precision']} over (a): {t_plain / (t_net + t_nms):.2f}x with network "
          f"and NMS in turn ({1000 * t_net:.0f} + {1000 * t_nms:.0f} ms per unit), {t_plain / max(t_net, t_nms):.2f}x "
          f"were they to overlap fully; (a)/(d) measured {fast['plain_over_headless']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
