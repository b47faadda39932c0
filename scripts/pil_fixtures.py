#!/usr/bin/env python3
"""Regenerates crates/domain/tests/fixtures/image/: small source images and PIL's bicubic resizes of them.

The Rust test crates/domain/tests/domain/data_image.rs compares crates/domain/src/data/image.rs against these files
(mean absolute difference < 1/255). Run from the repository root:
    /work/venv/bin/python scripts/pil_fixtures.py
Needs pillow and numpy. Output is deterministic for a given Pillow version.
"""
import os
import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "domain", "tests", "fixtures", "image")


def pattern(h, w, channels, seed):
    """Gradients, a checkerboard (sharp edges) and mild noise: exercises ringing and clamping."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(channels):
        g = 255.0 * (x / max(w - 1, 1) if c % 2 == 0 else y / max(h - 1, 1))
        checker = ((x // (3 + c) + y // (4 + c)) % 2) * 255.0
        noise = rng.normal(0.0, 12.0, size=(h, w))
        v = 0.5 * g + 0.5 * checker + noise
        chans.append(np.clip(np.rint(v), 0, 255).astype(np.uint8))
    arr = np.stack(chans, axis=-1)
    return arr[:, :, 0] if channels == 1 else arr


def main():
    os.makedirs(OUT, exist_ok=True)
    sources = {
        "rgb32x32.png": Image.fromarray(pattern(32, 32, 3, 1), "RGB"),
        "rgb64x48.png": Image.fromarray(pattern(48, 64, 3, 2), "RGB"),
        "gray28x28.png": Image.fromarray(pattern(28, 28, 1, 3), "L"),
    }
    for name, im in sources.items():
        im.save(os.path.join(OUT, name))
    jpeg_path = os.path.join(OUT, "rgb300x200.jpg")
    Image.fromarray(pattern(200, 300, 3, 4), "RGB").save(jpeg_path, quality=90)
    # PIL's own decode of the JPEG, to separate decoder differences from resize differences.
    Image.open(jpeg_path).convert("RGB").save(os.path.join(OUT, "rgb300x200.jpg.decoded.png"))

    for name in list(sources) + ["rgb300x200.jpg"]:
        im = Image.open(os.path.join(OUT, name)).convert("RGB")
        for (w, h) in [(224, 224), (40, 40)]:
            out = im.resize((w, h), Image.BICUBIC)
            out.save(os.path.join(OUT, f"{name}.bicubic{w}x{h}.png"))
    print("Pillow", Image.__version__ if hasattr(Image, "__version__") else "")


if __name__ == "__main__":
    main()
