"""Make the demo samples in data/ from the images that the stardist package ships.

    python data/make_samples.py

nuclei_2d_t.tif: ImageJ hyperstack, T=3, C=2 (DAPI, Membrane), 256 x 256,
0.5 µm pixels.  Each frame is a 256 x 256 crop of stardist's 2D sample
(rows 128-383), 8 pixels further right each time point, so the nuclei drift
left; it reaches into the right quarter that 2D_demo never saw in training.
The membrane channel outlines each nucleus grown by 6 pixels.

nuclei_3d.tif: OME-TIFF, Z=31, 61 x 57, voxel size (1.0, 0.5, 0.5) µm: stardist's 3D sample.

nuclei_2d.tif, nuclei_2d_masks.tif, nuclei_3d_masks.tif: stardist's 2D sample and the
masks of both, for `stardist-host evaluate` on the regions the demo models never saw
(2D columns 384-511, 3D columns 36-56).
"""

from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from stardist.data import test_image_nuclei_2d, test_image_nuclei_3d

HERE = Path(__file__).resolve().parent


def membrane(labels: np.ndarray, grow: int, rng: np.random.Generator) -> np.ndarray:
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    cells = np.where(dist <= grow, labels[iy, ix], 0)
    edges = ndimage.grey_dilation(cells, size=3) != ndimage.grey_erosion(cells, size=3)
    signal = ndimage.gaussian_filter(edges.astype(np.float32), 1.0) * 3000 + 200
    return (signal + rng.normal(0, 60, signal.shape)).clip(0, 65535).astype(np.uint16)


def main() -> None:
    rng = np.random.default_rng(7)
    img, mask = test_image_nuclei_2d(return_mask=True)
    frames = []
    for t in range(3):
        window = np.s_[128:384, 240 + 8 * t : 496 + 8 * t]
        frames.append([img[window], membrane(mask[window], 6, rng)])
    data = np.asarray(frames, dtype=np.uint16)  # T, C, Y, X
    tifffile.imwrite(
        HERE / "nuclei_2d_t.tif", data, imagej=True, resolution=(2.0, 2.0),
        metadata={"axes": "TCYX", "unit": "micron", "Labels": ["DAPI", "Membrane"] * 3},
    )
    tifffile.imwrite(HERE / "nuclei_2d.tif", img, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "YX", "unit": "micron"})
    tifffile.imwrite(HERE / "nuclei_2d_masks.tif", mask, imagej=True, metadata={"axes": "YX"})
    img3, mask3 = test_image_nuclei_3d(return_mask=True)
    tifffile.imwrite(HERE / "nuclei_3d_masks.tif", mask3, ome=True, photometric="minisblack", metadata={"axes": "ZYX"})
    tifffile.imwrite(
        HERE / "nuclei_3d.tif", img3, ome=True, photometric="minisblack",
        metadata={"axes": "ZYX", "Channel": {"Name": ["DAPI"]}, "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.5,
                  "PhysicalSizeX": 0.5, "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm"},
    )


if __name__ == "__main__":
    main()
