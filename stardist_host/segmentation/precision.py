"""The precision the network runs in: float32, or mixed where the hardware computes it natively.

"Mixed" keeps the weights, the inputs and the outputs in float32 and lets
TensorFlow's own graph rewrite (grappler's auto mixed precision, no extra
dependency) run the convolutions in a 16-bit type: bfloat16 through oneDNN on
CPUs with native bfloat16 instructions (AMX_BF16 or AVX512_BF16), float16 on
GPUs with tensor cores (compute capability 7.0 or newer).  Elsewhere 16-bit
arithmetic is emulated and slower than float32, so it is never chosen there.

The rewrite is a process-wide TensorFlow option and applies to every graph
built after it is set: the pipeline's compiled network and stardist's own
``predict_instances`` / ``predict_instances_big`` alike.  Each run sets it
before it loads its model, so a run in float32 after a mixed one in the same
process (a host) is float32 again.

``STARDIST_HOST_NATIVE_BF16`` overrides the CPU detection: ``0`` treats the
CPU as without native bfloat16 (to compare, or where the rewrite misbehaves),
``1`` as with it (a CPU whose flags cannot be read here).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass

from .device import network_on_gpu

__all__ = ["PRECISIONS", "Support", "cpu_support", "gpu_support", "native_support", "resolve", "configure_precision"]

log = logging.getLogger(__name__)

#: PRECISION's values: "auto" is "mixed" where the hardware runs it natively, else "float32".
PRECISIONS = ("auto", "float32", "mixed")
#: CPU flags (as /proc/cpuinfo spells them) of native bfloat16 arithmetic that oneDNN uses.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: Smallest CUDA compute capability with float16 tensor cores (Volta).
TENSOR_CORES = (7, 0)
_ENV = "STARDIST_HOST_NATIVE_BF16"
# TensorFlow's grappler options, by the 16-bit type they run the network in
_REWRITES = {"bfloat16": "auto_mixed_precision_onednn_bfloat16", "float16": "auto_mixed_precision"}


@dataclass(frozen=True)
class Support:
    """Whether a device computes a 16-bit type natively, and why (for the log)."""

    dtype: str | None  # "bfloat16" or "float16"; None: no native 16-bit type
    reason: str


def _cpu_flags(cpuinfo: str) -> set[str] | None:
    """The CPU's feature flags from ``cpuinfo`` (Linux), else from py-cpuinfo where installed; None: unknown."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    try:
        import cpuinfo as py_cpuinfo  # optional: reads the flags on Windows and macOS
    except ImportError:
        return None
    return set(py_cpuinfo.get_cpu_info().get("flags", ())) or None


def _onednn_enabled() -> bool:
    """Whether this TensorFlow runs its CPU kernels through oneDNN (the bfloat16 rewrite needs it).

    ``TF_ENABLE_ONEDNN_OPTS`` decides where it is set.  Unset, TensorFlow 2.9 and
    newer use oneDNN on Linux x86-64 (2.10's ``IsMklEnabled`` says False there
    although it does: it reports a build option); elsewhere TensorFlow's own
    answer is taken.
    """
    flag = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    if flag in ("0", "false", "1", "true"):
        return flag in ("1", "true")
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        return True
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def cpu_support(cpuinfo: str = "/proc/cpuinfo") -> Support:
    """Whether this CPU runs the network natively in bfloat16 (detected from its flags, never guessed)."""
    forced = os.environ.get(_ENV, "").strip()
    if forced in ("0", "1"):
        return Support("bfloat16" if forced == "1" else None, f"{_ENV}={forced}")
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        return Support(None, f"this system ({platform.system()}) does not tell the CPU's flags here; "
                             f"pip install py-cpuinfo lets it read them, or set {_ENV}=1 on a CPU with AMX or AVX512_BF16")
    found = [f for f in BF16_FLAGS if f in flags]
    if not found:
        return Support(None, "the CPU has neither AMX_BF16 nor AVX512_BF16")
    if not _onednn_enabled():
        return Support(None, f"the CPU has {found[0].upper()} but TensorFlow's oneDNN is off "
                             "(TF_ENABLE_ONEDNN_OPTS=0, or a build without it)")
    return Support("bfloat16", f"the CPU has {found[0].upper()}")


def gpu_support() -> Support:
    """Whether the first visible GPU has float16 tensor cores (compute capability >= 7.0)."""
    import tensorflow as tf

    gpus = tf.config.get_visible_devices("GPU")
    if not gpus:
        return Support(None, "no GPU is visible")
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", gpus[0].name)
    capability = details.get("compute_capability")
    if capability is None:
        return Support(None, f"the compute capability of {name} is unknown")
    if tuple(capability) < TENSOR_CORES:
        return Support(None, f"{name} (compute capability {capability[0]}.{capability[1]}) has no tensor cores "
                             f"(7.0 or newer)")
    return Support("float16", f"{name} has tensor cores (compute capability {capability[0]}.{capability[1]})")


def native_support(on_gpu: bool | None = None) -> tuple[Support, str]:
    """What the device the network runs on computes natively, and that device ("CPU" or "GPU").

    ``on_gpu`` None asks TensorFlow (:func:`~stardist_host.segmentation.device.network_on_gpu`).
    """
    if on_gpu is None:
        on_gpu = network_on_gpu()
    return (gpu_support(), "GPU") if on_gpu else (cpu_support(), "CPU")


def resolve(choice: str, support: Support, *, device: str = "CPU") -> str:
    """The precision a run uses: "float32", "bfloat16" or "float16", logging why.

    Parameters
    ----------
    choice
        PRECISION: "auto", "float32" or "mixed".
    support
        What the device computes natively (:func:`cpu_support` or :func:`gpu_support`).
    device
        "CPU" or "GPU", for the messages.
    """
    if choice not in PRECISIONS:
        raise ValueError(f"precision {choice!r}: must be one of {', '.join(map(repr, PRECISIONS))}")
    if choice == "float32":
        log.info("network in float32 (as asked)")
        return "float32"
    if support.dtype is None:
        if choice == "mixed":
            log.warning("mixed precision asked for, but %s: the network runs in float32 (emulated 16-bit "
                        "arithmetic would be slower)", support.reason)
        else:
            log.info("network in float32: no native 16-bit arithmetic on the %s (%s)", device, support.reason)
        return "float32"
    log.info("network in mixed precision, %s on the %s (%s)", support.dtype, device, support.reason)
    return support.dtype


def _set_rewrites(tf, dtype: str) -> None:
    """Switch TensorFlow's mixed-precision rewrites: the one for ``dtype`` on, the others off."""
    # TensorFlow ignores an option it does not know, so that it is missing only shows in what it reports back
    tf.config.optimizer.set_experimental_options({option: kind == dtype for kind, option in _REWRITES.items()})
    option = _REWRITES.get(dtype)
    if option is not None and not tf.config.optimizer.get_experimental_options().get(option):
        raise RuntimeError(f"TensorFlow {tf.__version__} has no {option!r} graph rewrite")


def configure_precision(choice: str = "auto", *, on_gpu: bool | None = None) -> str:
    """Set TensorFlow up to run the network in the precision ``choice`` resolves to, and return it.

    Call after :func:`~stardist_host.segmentation.device.configure_device`
    and before the model's network first runs.

    Parameters
    ----------
    choice
        PRECISION: "auto" (mixed where native, else float32), "float32" or "mixed".
    on_gpu
        Whether the network runs on a GPU; None asks TensorFlow (a GPU is visible).

    Returns
    -------
    str
        "float32", "bfloat16" or "float16", for the log and the run's summary.
    """
    import tensorflow as tf

    # resolve() reads neither the support nor the device for float32: TensorFlow is not asked
    support, device = (Support(None, "float32 asked for"), "CPU") if choice == "float32" else native_support(on_gpu)
    dtype = resolve(choice, support, device=device)
    try:
        _set_rewrites(tf, dtype)
    except RuntimeError as err:  # an older TensorFlow: float32 rather than a failed run
        log.warning("%s: the network runs in float32", err)
        _set_rewrites(tf, "float32")
        return "float32"
    return dtype
