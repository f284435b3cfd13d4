"""Write tests/data/corruptions_ref.npz: reference outputs of the ``imagecorruptions`` package.

Not run by the tests (the package does not import with hardseg's stack). Regenerate in a
throwaway environment::

    python3 -m venv /tmp/icvenv
    /tmp/icvenv/bin/pip install imagecorruptions==1.1.2 'setuptools<81' 'numpy<2' scipy scikit-image 'opencv-python-headless<4.11'
    /tmp/icvenv/bin/python tests/data/make_corruption_fixture.py

Random corruptions are generated after ``np.random.seed(SEED)``; the test passes
``np.random.RandomState(SEED)`` to hardseg's implementation, so both draw the same numbers.
"""

from pathlib import Path

import numpy as np
from imagecorruptions import corrupt

SEED = 1234
CASES = [("brightness", 3), ("contrast", 4), ("saturate", 5), ("jpeg_compression", 2), ("pixelate", 3),
         ("defocus_blur", 2), ("zoom_blur", 3), ("gaussian_noise", 3), ("shot_noise", 2), ("speckle_noise", 4),
         ("motion_blur", 2), ("fog", 3), ("snow", 3), ("elastic_transform", 4)]


def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for k in range(2):
        base = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(float)
        base[8 + k:20, 6:18 + k] = (200, 40 * k, 90)
        out.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def main() -> None:
    imgs = images()
    arrays = {"images": imgs}
    for name, sev in CASES:
        outs = []
        for k, img in enumerate(imgs):
            np.random.seed(SEED + k)
            outs.append(corrupt(img, corruption_name=name, severity=sev))
        arrays[f"{name}-{sev}"] = np.stack(outs)
    path = Path(__file__).with_name("corruptions_ref.npz")
    np.savez_compressed(path, **arrays)
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
