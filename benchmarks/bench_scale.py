"""Scale run: the same OME-Zarr time series segmented with 1 and 2 local Dask workers.

Prints units (planes) per second for each, their ratio, and the peak resident
memory of each worker process, measured in one run.  The first units on each
worker include loading TensorFlow and the model, so the figures are given
with and without that start-up (the time to the first finished unit).

    python benchmarks/bench_scale.py [--planes 24] [--size 256] [--workers 1 2]

Figures on a machine shared with other work are noisy: compare ratios from
one run, not absolute numbers from different runs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import bench_inference  # this folder is on the path of a script run from it
import numpy as np


def make_store(path: Path, planes: int, size: int) -> Path:
    """An NGFF 0.4 T x Y x X store (one chunk per plane) tiled from stardist's 2D sample."""
    import zarr
    from stardist.data import test_image_nuclei_2d

    img = test_image_nuclei_2d()
    data = np.zeros((planes, size, size), np.uint16)
    for i in range(planes):
        y, x = (37 * i) % (img.shape[0] - min(size, img.shape[0])), (53 * i) % (img.shape[1] - min(size, img.shape[1]))
        tile = img[y:y + size, x:x + size]
        data[i] = np.pad(tile, [(0, size - tile.shape[0]), (0, size - tile.shape[1])], mode="reflect")
    kwargs = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    group = zarr.open_group(str(path), mode="w", **kwargs)
    from stardist_host.io.omezarr import _create_plane_array

    array = _create_plane_array(group, "0", shape=data.shape, chunks=(1, size, size), dtype=data.dtype,
                                dim_names="tyx", zarr_format=2)
    array[:] = data
    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.5]}]}]}]
    return path


def run_once(store: Path, workers: int) -> dict:
    """Segment every plane with ``workers`` local worker processes; time, per-unit record times, peak memory."""
    import cloudpickle
    import distributed

    cloudpickle.register_pickle_by_value(bench_inference)  # the workers cannot import it: send the function itself

    from stardist_host.runs import distributed as dist
    from stardist_host.segmentation.settings import Settings

    settings = Settings(ndim=2, current_time_point=False, use_gpu=False, overwrite=True)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        finished: list[float] = []
        start = time.perf_counter()
        result = dist.segment_distributed(settings, store, None, scheduler=cluster.scheduler_address,
                                          progress=lambda done, total: finished.append(time.perf_counter()))
        wall = time.perf_counter() - start
        peaks = sorted(client.run(bench_inference.peak_rss_mb).values())
    first = finished[1] - start if len(finished) > 1 else wall  # finished[0] is the call before any unit
    units = len(result.units)
    steady = (units - 1) / (wall - first) if wall > first and units > 1 else float("nan")
    return {"workers": workers, "units": units, "wall": wall, "first": first, "ups": units / wall,
            "steady_ups": steady, "peaks": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=24, help="time points of one 2D plane each (default 24)")
    parser.add_argument("--size", type=int, default=256, help="plane edge in pixels (default 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        store = make_store(folder / "series.zarr", args.planes, args.size)
        rows = [run_once(store, n) for n in args.workers]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.planes} planes of {args.size} x {args.size}, 2D_demo on the CPU, one plane per task")
    print("workers  wall s  to 1st unit s  units/s  units/s after start-up  peak RSS per worker (MB)")
    for r in rows:
        print(f"{r['workers']:7d}  {r['wall']:6.1f}  {r['first']:13.1f}  {r['ups']:7.2f}  {r['steady_ups']:22.2f}  "
              f"{', '.join(f'{p:.0f}' for p in r['peaks'])}")
    if len(rows) > 1:
        base = rows[0]
        for r in rows[1:]:
            print(f"ratio {r['workers']} / {base['workers']} workers: {r['ups'] / base['ups']:.2f} overall, "
                  f"{r['steady_ups'] / base['steady_ups']:.2f} after start-up")


if __name__ == "__main__":
    main()
