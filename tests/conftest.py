"""Shared fixtures: small image sets, the bundled samples and models, and a fast fake model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PRECISION="auto" runs float32 in the suite (also in the child processes and Dask workers it starts), so that
# the tests comparing with stardist's predict_instances compare float32 with float32 on any CPU; the tests of
# mixed precision (test_precision.py) set it to 1 where they need bfloat16.
os.environ["STARDIST_HOST_NATIVE_BF16"] = "0"

from stardist_host import MemoryImageSet  # noqa: E402
from stardist_host.doctor import SAMPLE_2D, SAMPLE_3D, samples_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class FakeModel:
    """Stands in for a StarDist model: labels = connected components of normalised image > 0.5."""

    def __init__(self, ndim: int = 2):
        self.name = f"fake{ndim}d"
        self.config = SimpleNamespace(n_dim=ndim, anisotropy=None)
        self.calls: list[dict] = []

    def predict_instances(self, x, **kwargs):
        self.calls.append({"shape": x.shape, **kwargs})
        labels, _ = ndimage.label(x > 0.5)
        return labels.astype(np.int32), {}


def blobs_tczyx(t: int = 3, c: int = 2, z: int = 4, size: int = 32, per_plane: int = 3) -> np.ndarray:
    """A TCZYX stack with ``per_plane`` separate bright squares in each plane of channel 0."""
    data = np.zeros((t, c, z, size, size), np.uint16)
    for i in range(per_plane):
        data[:, 0, :, 4 + 9 * i : 10 + 9 * i, 4:10] = 1000
    data[:, 1] = 7
    return data


@pytest.fixture(autouse=True)
def float32_after_each_test():
    """TensorFlow's mixed-precision rewrite is process-wide: a test that switched it on leaves it off again."""
    yield
    import sys

    if "tensorflow" in sys.modules:
        from stardist_host.segmentation.precision import configure_precision

        configure_precision("float32", on_gpu=False)


@pytest.fixture
def memory_imageset() -> MemoryImageSet:
    return MemoryImageSet(blobs_tczyx(), channel_names=["DAPI", "Other"], voxel_size=(2.0, 0.5, 0.5), current_time_point=1)


@pytest.fixture
def sample_2d() -> Path:
    return samples_dir() / SAMPLE_2D


@pytest.fixture
def sample_3d() -> Path:
    return samples_dir() / SAMPLE_3D


@pytest.fixture(scope="session")
def model_2d():
    from stardist_host.segmentation.models import load_model

    return load_model("2D_demo", ndim=2)


@pytest.fixture(scope="session")
def model_3d():
    from stardist_host.segmentation.models import load_model

    return load_model("3D_demo", ndim=3)


class OwnThreadImageSet(MemoryImageSet):
    """A MemoryImageSet that raises when any member is used from a thread other than the one that made it,
    as hosts whose objects belong to one thread (COM, .NET, Qt) do."""

    def __init__(self, *args, **kwargs):
        import threading

        object.__setattr__(self, "_owner", threading.get_ident())
        super().__init__(*args, **kwargs)

    def __getattribute__(self, name):
        import threading

        if not name.startswith("_") and threading.get_ident() != object.__getattribute__(self, "_owner"):
            raise RuntimeError(f"{name} used from thread {threading.current_thread().name}")
        return object.__getattribute__(self, name)


def sample_planes_tczyx(t: int = 2, z: int = 4, size: int = 64) -> np.ndarray:
    """A (T, 1, Z, size, size) uint16 stack of different crops of stardist's 2D sample, nuclei in every plane."""
    from stardist.data import test_image_nuclei_2d

    img = test_image_nuclei_2d()
    data = np.zeros((t, 1, z, size, size), np.uint16)
    for i in range(t * z):
        y, x = (37 * i) % (512 - size), (53 * i) % (512 - size)
        data[i // z, 0, i % z] = img[y:y + size, x:x + size]
    return data


#: Test modules that open napari's Qt viewer.  A Qt OpenGL viewer and TensorFlow cannot share a process
#: here (either order ends in a segmentation fault), and the rest of the suite imports TensorFlow, so in a
#: mixed session these run in a process of their own (tests/test_napari_gui.py); given alone, they run here.
GUI_TESTS = ("test_napari_widget.py", "test_napari_analyses.py")


def _gui_only(config) -> bool:
    return all(Path(str(arg).split("::")[0]).name in GUI_TESTS for arg in config.args)


def pytest_ignore_collect(collection_path, config):
    if collection_path.name in GUI_TESTS and not _gui_only(config):
        return True
    return None
