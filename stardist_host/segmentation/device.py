"""Choosing where TensorFlow runs (a GPU with memory growth, or the CPU) and how much memory it may use."""

from __future__ import annotations

import logging
import os

from ..errors import SettingsError

__all__ = ["configure_device", "network_on_gpu", "visible_gpus", "memory_budget", "host_memory_budget",
           "DEFAULT_GPU_BYTES"]

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """Names of the GPUs TensorFlow can see (empty on a CPU-only installation)."""
    import tensorflow as tf

    return [g.name for g in tf.config.list_physical_devices("GPU")]


def network_on_gpu() -> bool:
    """Whether TensorFlow runs the network on a GPU: one is visible (after :func:`configure_device`)."""
    import tensorflow as tf

    return bool(tf.config.get_visible_devices("GPU"))


def configure_device(use_gpu: bool = True, *, memory_limit_mb: int | None = None) -> str:
    """Set TensorFlow up to run on the GPU (memory growth on, or a fixed limit) or the CPU; return which.

    Memory growth makes TensorFlow take GPU memory as it needs it instead of
    all of it at start, so that a host application keeps its own; it never
    gives memory back, though, until the process ends.  ``memory_limit_mb``
    (GPU_MEMORY_LIMIT_MB) instead caps what TensorFlow takes on each GPU.
    These settings must be made before TensorFlow first uses a device; when
    a host runs a second script in the same process they are already in
    force, and this says so in the log (a new process, e.g.
    SEPARATE_PROCESS=True, applies them).

    Parameters
    ----------
    use_gpu
        False hides every GPU from TensorFlow (USE_GPU=False).
    memory_limit_mb
        Most GPU memory TensorFlow may take, in MB (units of 2**20 bytes);
        None: memory growth.

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
        elif memory_limit_mb is None:  # memory growth or a fixed limit: TensorFlow allows one or the other
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        else:
            for gpu in gpus:
                fixed = tf.config.LogicalDeviceConfiguration(memory_limit=int(memory_limit_mb))
                tf.config.set_logical_device_configuration(gpu, [fixed])
    except RuntimeError as err:  # TensorFlow already initialised in this process
        if use_gpu and memory_limit_mb is not None:
            log.warning("GPU_MEMORY_LIMIT_MB=%d not applied: TensorFlow already uses the GPU in this process; it "
                        "takes effect in a new process, or with SEPARATE_PROCESS=True (%s)", memory_limit_mb, err)
        else:
            log.warning("device settings unchanged, TensorFlow is already running in this process (%s)", err)
    visible = tf.config.get_visible_devices("GPU")
    if visible:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in visible]
        limit = f", at most {memory_limit_mb} MB" if memory_limit_mb is not None else ""
        device = f"GPU ({', '.join(names)}{limit})"
    else:
        device = "CPU" + (" (USE_GPU=False)" if gpus and not use_gpu else "")
    log.info("TensorFlow %s runs on %s", tf.__version__, device)
    return device


#: GPU memory assumed where TensorFlow does not say how much the card has: small
#: enough for any card that runs TensorFlow, so that a run never over-commits.
DEFAULT_GPU_BYTES = 2 * 2**30
# Smallest budget: below it even one small plane's activations do not fit.
_MIN_BUDGET = 2**28


def _env_bytes(name: str) -> int | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = int(float(text))
    except (ValueError, OverflowError):  # not a number, or inf
        value = 0
    if value <= 0:
        raise SettingsError(name, text, "must be a positive number of bytes, e.g. 4e9")
    return value


def host_memory_budget() -> int:
    """Bytes of main memory the planes (volumes) in flight may hold: a quarter of what is available to this
    process (what the machine has free, or the cgroup limit where lower).

    ``STARDIST_HOST_MEMORY`` (bytes) overrides it, e.g. to leave room for a host.
    """
    env = _env_bytes("STARDIST_HOST_MEMORY")
    if env is not None:
        return env
    import psutil

    available = int(psutil.virtual_memory().available)
    limit = _cgroup_limit()  # a container or a cluster job may allow far less than the machine has
    return max(_MIN_BUDGET, (available if limit is None else min(available, limit)) // 4)


def memory_budget(use_gpu: bool | None = None) -> int:
    """Bytes the network may use for one call: half the GPU memory not in use, else a quarter of main memory.

    ``STARDIST_HOST_MEMORY`` (bytes) overrides it, e.g. to leave room for a host.  TensorFlow's public API
    reports only the GPU memory in use (``tf.config.experimental.get_memory_info``), so the total of the
    first visible GPU is ``STARDIST_HOST_GPU_BYTES``, else the local device list's ``memory_limit``, else
    :data:`DEFAULT_GPU_BYTES`.

    Parameters
    ----------
    use_gpu
        False: main memory even where a GPU is visible.
    """
    env = _env_bytes("STARDIST_HOST_MEMORY")
    if env is not None:
        return env
    if use_gpu is False or not network_on_gpu():
        return host_memory_budget()
    import tensorflow as tf

    total = _env_bytes("STARDIST_HOST_GPU_BYTES")
    if total is None:
        try:
            from tensorflow.python.client import device_lib

            limits, why = [d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU"], ""
        except (ImportError, AttributeError, RuntimeError) as err:
            limits, why = [], f" ({err})"
        if not limits or not limits[0]:
            log.info("GPU memory unknown%s: assuming %d MiB", why, DEFAULT_GPU_BYTES // 2**20)
        total = int(limits[0]) if limits and limits[0] else DEFAULT_GPU_BYTES
    used = tf.config.experimental.get_memory_info("GPU:0")["current"]
    return max(_MIN_BUDGET, (total - used) // 2)


def _cgroup_limit(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's control group (Linux, cgroup v1 or v2), if any."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = os.path.join(root, path.lstrip("/"), "memory.max")
        elif "memory" in controllers.split(","):
            candidate = os.path.join(root, "memory", path.lstrip("/"), "memory.limit_in_bytes")
        else:
            continue
        try:
            with open(candidate) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None
