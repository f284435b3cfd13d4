"""Write tests/data/corruptions_ref.npz: reference outputs of the ``imagecorruptions`` package.

Not run by the tests (the package does not import with hardseg's stack). Regenerate in a
throwaway environment::

    python3 -m venv /tmp/icvenv
    /tmp/icvenv/bin/pip install imagecorruptions==1.1.2 'setuptools<81' 'numpy<2' scipy scikit-image 'opencv-python-headless<4.11'
    /tmp/icvenv/bin/python tests/data/make_corruption_fixture.py

Random corruptions are generated after ``np.random.seed(SEED)``; the test passes
``np.random.RandomState(SEED)`` to hardseg's implementation, so both draw the same numbers.

``frost`` blends the package's frost photographs, which are not ours to ship: here the package is
pointed (through its ``resource_filename``) at six small random textures written under the reference
file names (``frost_textures``); their file bytes are stored as ``frost_file:<name>``, so the test
writes the very same files into the folder that hardseg's ``frost`` reads.
"""

import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import imagecorruptions.corruptions as ic
from imagecorruptions import corrupt

SEED = 1234
FROST_STEP = 7  # frost cases are seeded SEED + k + FROST_STEP * severity: their draws pick each of the five files
CASES = [("brightness", 3), ("contrast", 4), ("saturate", 5), ("jpeg_compression", 2), ("pixelate", 3),
         ("defocus_blur", 2), ("zoom_blur", 3), ("gaussian_noise", 3), ("shot_noise", 2), ("speckle_noise", 4),
         ("motion_blur", 2), ("fog", 3), ("snow", 3), ("elastic_transform", 4),
         ("spatter", 1), ("spatter", 2), ("spatter", 3), ("spatter", 4), ("spatter", 5), ("frost", 1), ("frost", 3),
         ("frost", 5)]
# (file name, height, width): larger and smaller than the 32x32 images, to take both resize paths
FROST_SHAPES = [("frost1.png", 40, 48), ("frost2.png", 24, 40), ("frost3.png", 36, 28), ("frost4.jpg", 20, 20),
                ("frost5.jpg", 48, 64), ("frost6.jpg", 40, 40)]


def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for k in range(2):
        base = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(float)
        base[8 + k:20, 6:18 + k] = (200, 40 * k, 90)
        out.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def frost_textures() -> dict[str, bytes]:
    """Frost-like random textures (pale, blotchy, blurred noise) encoded as the reference's file names say."""
    rng = np.random.default_rng(7)
    files = {}
    for name, h, w in FROST_SHAPES:
        noise = rng.normal(0, 1, (h // 4 + 2, w // 4 + 2, 3))
        big = np.kron(noise, np.ones((4, 4, 1)))[:h, :w] + rng.normal(0, 0.6, (h, w, 3))
        tex = np.clip(150 + 50 * big, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(tex).save(buf, "PNG" if name.endswith(".png") else "JPEG", quality=90)
        files[name] = buf.getvalue()
    return files


def main() -> None:
    imgs = images()
    arrays = {"images": imgs}
    textures = frost_textures()
    folder = Path(tempfile.mkdtemp())
    for name, data in textures.items():
        (folder / name).write_bytes(data)
        arrays[f"frost_file:{name}"] = np.frombuffer(data, dtype=np.uint8)
    ic.resource_filename = lambda package, path: str(folder / Path(path).name)
    for name, sev in CASES:
        outs = []
        for k, img in enumerate(imgs):
            np.random.seed(SEED + k + (FROST_STEP * sev if name == "frost" else 0))
            outs.append(corrupt(img, corruption_name=name, severity=sev))
        arrays[f"{name}-{sev}"] = np.stack(outs)
    path = Path(__file__).with_name("corruptions_ref.npz")
    np.savez_compressed(path, **arrays)
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
