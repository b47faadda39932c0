#!/usr/bin/env python3
"""Writes crates/domain/tests/fixtures/image/resize_grid/: PIL's `Image.resize((ow, oh), BICUBIC)` of small
synthetic images over a grid of shapes (committed; tests never run this).

Pillow runs the two separable passes in an order that depends on the shapes (vertical first
when the image shrinks vertically and is not much wider than the target, see
crates/domain/src/data/image.rs `resize_bicubic`); with 8-bit rounding between the passes the order changes
the pixels, so every down/up/equal combination per axis, 1-pixel sides and odd targets are
covered here. crates/domain/tests/domain/data_image.rs rebuilds each source with the same formula (`source` below)
and asserts a maximum difference of 0.

Files: `<h>x<w>_to_<oh>x<ow>_<mode>.png`, the 8-bit RGB result, where mode is `rgb` (an RGB
source) or `l` (a gray source resized in mode L, then converted to RGB: equal to resizing the
RGB conversion, checked here).

How they were made:
    python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow numpy
    /tmp/pilvenv/bin/python scripts/pil_resize_grid.py
(Pillow 13.0.0, as the script prints.)
"""
import os
import shutil

import numpy as np
from PIL import Image, __version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "domain", "tests", "fixtures", "image", "resize_grid")


def source(h, w, channels):
    """Pixel (y, x, c) = high byte of a 32-bit multiplicative hash; the Rust test computes the same."""
    y, x, c = np.meshgrid(np.arange(h, dtype=np.uint64), np.arange(w, dtype=np.uint64),
                          np.arange(channels, dtype=np.uint64), indexing="ij")
    v = ((x * 7919 + y * 104729 + c * 1299709 + 12345) * 2654435761) & 0xFFFFFFFF
    return (v >> 24).astype(np.uint8)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    sides = [1, 5, 7, 15, 16, 17, 20, 33, 40]
    cases = [(h, w, 16, 16) for h in sides for w in sides]
    # Either side of the order switch (2 * (w - ow) < h - oh).
    cases += [(40, 27, 16, 16), (40, 28, 16, 16), (33, 24, 16, 16), (33, 25, 16, 16)]
    cases += [(h, w, 9, 13) for h in (1, 7, 9, 13, 17, 40) for w in (1, 7, 9, 13, 17, 40)]
    cases += [(h, w, 13, 9) for h in (1, 9, 13, 30, 40) for w in (1, 9, 13, 20, 40)]
    cases += [(h, w, 224, 224) for (h, w) in
              [(1, 300), (300, 1), (40, 300), (300, 40), (230, 7), (7, 230), (225, 224),
               (240, 231), (240, 232)]]
    orders = {"hv": 0, "vh": 0, "same": 0}
    for (h, w, oh, ow) in cases:
        rgb = Image.fromarray(source(h, w, 3), "RGB")
        out = rgb.resize((ow, oh), Image.BICUBIC)
        out.save(os.path.join(OUT, f"{h}x{w}_to_{oh}x{ow}_rgb.png"))
        # Which pass order Pillow used (for the record printed below).
        hv = rgb.resize((ow, h), Image.BICUBIC).resize((ow, oh), Image.BICUBIC)
        vh = rgb.resize((w, oh), Image.BICUBIC).resize((ow, oh), Image.BICUBIC)
        a, b, o = (np.asarray(i) for i in (hv, vh, out))
        orders["same" if (a == b).all() else "hv" if (a == o).all() else "vh" if (b == o).all() else "?"] += 1
    for (h, w, oh, ow) in [(40, 7, 16, 16), (7, 40, 16, 16), (17, 15, 16, 16), (1, 40, 16, 16), (300, 40, 224, 224)]:
        gray = Image.fromarray(source(h, w, 1)[:, :, 0], "L")
        out = gray.resize((ow, oh), Image.BICUBIC).convert("RGB")
        via_rgb = gray.convert("RGB").resize((ow, oh), Image.BICUBIC)
        assert (np.asarray(out) == np.asarray(via_rgb)).all()
        out.save(os.path.join(OUT, f"{h}x{w}_to_{oh}x{ow}_l.png"))
    print("Pillow", __version__, "cases", len(cases), "pass orders", orders)


if __name__ == "__main__":
    main()
