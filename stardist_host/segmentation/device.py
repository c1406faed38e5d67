"""Choosing where TensorFlow runs: a GPU with memory growth, or the CPU."""

from __future__ import annotations

import logging

__all__ = ["configure_device", "visible_gpus"]

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """Names of the GPUs TensorFlow can see (empty on a CPU-only installation)."""
    import tensorflow as tf

    return [g.name for g in tf.config.list_physical_devices("GPU")]


def configure_device(use_gpu: bool = True) -> str:
    """Set TensorFlow up to run on the GPU (memory growth on) or the CPU; return which.

    Memory growth makes TensorFlow take GPU memory as it needs it instead of
    all of it at start, so that a host application keeps its own.  Both
    settings must be made before TensorFlow first uses a device; when a host
    runs a second script in the same process they are already in force, and
    this says so in the log.

    Parameters
    ----------
    use_gpu
        False hides every GPU from TensorFlow (USE_GPU=False).

    Returns
    -------
    str
        ``"GPU (name, ...)"`` or ``"CPU"``, for the log and the run's summary.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    try:
        if not use_gpu:
            tf.config.set_visible_devices([], "GPU")
        else:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as err:  # TensorFlow already initialised in this process
        log.warning("device settings unchanged, TensorFlow is already running in this process (%s)", err)
    visible = tf.config.get_visible_devices("GPU")
    if visible:
        names = []
        for gpu in visible:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(details.get("device_name", gpu.name))
        device = f"GPU ({', '.join(names)})"
    else:
        device = "CPU" + (" (USE_GPU=False)" if gpus and not use_gpu else "")
    log.info("TensorFlow %s runs on %s", tf.__version__, device)
    return device
