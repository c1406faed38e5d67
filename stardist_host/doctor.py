"""``stardist-host doctor``: the host's "Test environment" for a StarDist conda environment."""

from __future__ import annotations

import logging
import platform
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import Callable

from .resources import bundled_folder

__all__ = ["main", "run_checks", "samples_dir", "SAMPLE_2D", "SAMPLE_3D"]

log = logging.getLogger(__name__)

SAMPLE_2D = "nuclei_2d_t.tif"
SAMPLE_3D = "nuclei_3d.tif"


def samples_dir() -> Path:
    """The folder of the bundled sample images (``data/`` in a checkout)."""
    return bundled_folder("data")


def _versions() -> str:
    import csbdeep
    import numpy
    import stardist
    import tensorflow as tf
    import tifffile

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, stardist {stardist.__version__}, "
        f"csbdeep {csbdeep.__version__}, numpy {numpy.__version__}, tifffile {tifffile.__version__}"
    )


def _host() -> str:
    """Whether a host handed over an image set, and the thread the script (and every image-set call) runs on."""
    import threading

    from .host import active_imageset_or_none

    thread = threading.current_thread()
    where = f"thread {thread.name!r} (id {thread.ident}{', the main thread' if thread is threading.main_thread() else ''})"
    imageset = active_imageset_or_none()
    if imageset is None:
        return f"no active image set (headless, or the host's adapter has not called set_active_imageset); {where}"
    shape = (imageset.time_point_count, imageset.channel_count, imageset.plane_count, *imageset.plane_shape)
    return (f"inside a host: active image set {type(imageset).__name__}, TCZYX {'x'.join(map(str, shape))}, "
            f"channels {', '.join(imageset.channel_names)}; image-set calls run on {where}")


def _bundled_models() -> str:
    from .segmentation.models import bundled_models, bundled_models_dir, load_model, read_config

    names = bundled_models()
    if not names:
        raise RuntimeError(f"no bundled models in {bundled_models_dir()}")
    loaded = []
    for name in names:
        ndim = read_config(bundled_models_dir() / name)["n_dim"]
        model = load_model(name, ndim=ndim)
        loaded.append(f"{name} ({ndim}D, thresholds prob {model.thresholds.prob:.2f}, nms {model.thresholds.nms:.2f})")
    return ", ".join(loaded)


def _sample_run(ndim: int, use_gpu: bool) -> str:
    from .io.imagesets import TiffImageSet
    from .runs.local import run
    from .segmentation.settings import Settings

    sample = samples_dir() / (SAMPLE_2D if ndim == 2 else SAMPLE_3D)
    settings = Settings(ndim=ndim, model_name=f"{ndim}D_demo", current_time_point=True, use_gpu=use_gpu)
    with TiffImageSet(sample) as imageset:  # nothing is saved: the doctor writes no file
        result = run(settings, imageset)
    if result.total == 0:
        raise RuntimeError(f"{ndim}D_demo found no nuclei in {sample.name}")
    return f"{ndim}D_demo on {sample.name}: {result.summary()}"


def _precision() -> str:
    """What PRECISION="auto" runs the network in here, and why."""
    from .segmentation.precision import native_support

    support, device = native_support()
    how = f"float32 on the {device}" if support.dtype is None else f"{support.dtype} (mixed precision)"
    return f'PRECISION="auto" runs the network in {how}: {support.reason}'


def run_checks(*, use_gpu: bool = True) -> bool:
    """Run every check, print one line each, and return whether all passed."""
    from .segmentation.device import configure_device, visible_gpus

    checks: list[tuple[str, Callable[[], str]]] = [
        ("python", lambda: f"{platform.python_version()} at {sys.executable}"),
        ("host", _host),
        ("packages", _versions),
        ("device", lambda: configure_device(use_gpu)),
        ("precision", _precision),
        ("GPUs", lambda: ", ".join(visible_gpus()) or "none (TensorFlow runs on the CPU; see README for GPU set-up)"),
        ("bundled models", _bundled_models),
        ("2D sample", partial(_sample_run, 2, use_gpu)),
        ("3D sample", partial(_sample_run, 3, use_gpu)),
    ]
    ok = True
    for name, check in checks:
        try:
            print(f"[ OK ] {name}: {check()}", flush=True)
        except Exception as err:  # the doctor reports every failure, whatever it is
            ok = False
            print(f"[FAIL] {name}: {type(err).__name__}: {err}", flush=True)
            log.debug("%s", traceback.format_exc())
    print("all checks passed" if ok else "some checks failed: see [FAIL] above", flush=True)
    return ok


#: The doctor as a host's script editor runs it: ``from stardist_host.doctor import main; main()``.
main = run_checks
