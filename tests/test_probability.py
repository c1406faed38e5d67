"""OUTPUT_PROBABILITY: a float32 channel of the network's object probability beside the labels (issue 19, item 6).

Oracles: stardist's own ``predict`` (the probability on the network's grid)
and ``predict_instances`` (the labels, which the option must not change).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from csbdeep.utils import normalize
from stardist.data import test_image_nuclei_2d

from stardist_host import cli
from stardist_host.io.imagesets import MemoryImageSet
from stardist_host.runs.files import segment_file
from stardist_host.runs.local import run
from stardist_host.segmentation.settings import Settings


def _settings(**kw) -> Settings:
    return Settings(ndim=2, use_gpu=False, separate_process=False, precision="float32", **kw)


def _planes() -> np.ndarray:
    """(T=1, C=1, Z=3, Y, X) uint16: two crops of stardist's 2D sample and a blank plane."""
    image = test_image_nuclei_2d()
    return np.stack([image[:160, :192], image[200:360, 100:292], np.full((160, 192), 7, image.dtype)])[None, None]


def test_the_probability_is_the_networks_on_the_images_grid_and_the_labels_do_not_change(model_2d):
    data = _planes()
    with_prob, without = MemoryImageSet(data.copy()), MemoryImageSet(data.copy())
    result = run(_settings(output_probability=True, current_time_point=False), with_prob)
    plain = run(_settings(current_time_point=False), without)
    np.testing.assert_array_equal(with_prob.channel(result.channel), without.channel(plain.channel))
    prob = with_prob.channel(result.probability_channel)[0]  # (Z, Y, X)
    assert prob.dtype == np.float32 and prob.shape == (3, 160, 192)
    assert with_prob.channel_names[result.probability_channel] == "Stardist_Channel 0 probability"
    assert "object probability in channel 2" in result.summary()
    for z in (0, 1):
        x = normalize(data[0, 0, z].astype(np.float32), 1, 99.8)
        grid, _ = model_2d.predict(x)  # the oracle: stardist's probability, every second pixel
        nearest = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)[:160, :192]
        assert np.abs(prob[z] - nearest).mean() < 0.02 and np.corrcoef(prob[z].ravel(), nearest.ravel())[0, 1] > 0.98
        labels = without.channel(plain.channel)[0, z]
        assert prob[z][labels > 0].mean() > 0.3 > 0.1 > prob[z][labels == 0].mean()
    assert not prob[2].any()  # no signal: no nuclei, probability 0


@pytest.mark.parametrize("extra", [{"n_tiles": (2, 2)}, {"scale": 0.75}])
def test_tiled_and_scaled_units_keep_their_labels(extra, model_2d):
    data = _planes()[:, :, :1]
    with_prob, without = MemoryImageSet(data.copy()), MemoryImageSet(data.copy())
    result = run(_settings(output_probability=True, **extra), with_prob)
    plain = run(_settings(**extra), without)
    labels = with_prob.channel(result.channel)[0, 0]
    np.testing.assert_array_equal(labels, without.channel(plain.channel)[0, 0])
    prob = with_prob.channel(result.probability_channel)[0, 0]
    assert prob.shape == labels.shape and prob[labels > 0].mean() > 0.3 > 0.1 > prob[labels == 0].mean()
    if "n_tiles" in extra:  # tiles overlap by the network's field of view: the whole plane's probability
        whole = MemoryImageSet(data.copy())
        untiled = whole.channel(run(_settings(output_probability=True), whole).probability_channel)[0, 0]
        assert np.abs(prob - untiled).max() < 0.01


def test_a_tiff_gets_the_probability_as_a_float_image_after_the_labels(tmp_path):
    planes = _planes()[0, 0, :2]
    tifffile.imwrite(tmp_path / "in.tif", (planes / planes.max() * 255).astype(np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})  # 8-bit: widened to share the labels' image
    out = tmp_path / "out.ome.tif"
    result = segment_file(_settings(output_probability=True, current_time_point=False), tmp_path / "in.tif", out)
    with tifffile.TiffFile(out) as tif:
        first, second = (s.asarray() for s in tif.series)
        assert [s.dtype for s in tif.series] == [np.uint16, np.float32]
    assert first.shape[-4:-2] == (2, 2) and second.shape[-3:] == (2, 160, 192)  # input + labels; probability
    assert tifffile.imread(out).max() == first.max()  # readers of the first image see the labels
    assert result.probability_channel == 2 and "object probability in channel 2" in result.summary()


def test_label_store_runs_refuse_it_with_one_line_before_anything_is_written(tmp_path, sample_2d, caplog):
    out = tmp_path / "out.ome.tif"
    assert cli.main(["segment", str(sample_2d), str(out), "--cpu", "--output-probability", "--resume"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "--output-probability: is not available where the labels go through a label store (an OME-Zarr input, "
        "--resume, --workers, --scheduler): run on a TIFF without them"]
    assert list(tmp_path.iterdir()) == []
