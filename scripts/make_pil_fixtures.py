#!/usr/bin/env python3
"""Writes the decoder-parity fixtures under crates/domain/tests/fixtures/image/decode/ (committed; tests never
run this). crates/domain/tests/domain/data_image.rs decodes every source file with crates/domain/src/data/image.rs and compares it
with PIL's `Image.open(f).convert("RGB")`, which is what the official timm/VTAB loader does.

How they were made:
    python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow numpy
    /tmp/pilvenv/bin/python scripts/make_pil_fixtures.py
(Pillow 13.0.0 with libjpeg-turbo 3.2.0 and zlib 1.2.13, as the script prints.)

Sources (small, deterministic; gradients + edges + noise so the IDCT and upsampling matter):
  jpeg_rgb444.jpg jpeg_rgb422.jpg jpeg_rgb420.jpg   baseline YCbCr, the three chroma subsamplings
  jpeg_rgb420_odd.jpg                               baseline 4:2:0, 37x29 (partial MCUs)
  jpeg_progressive.jpg                              progressive 4:2:0
  jpeg_gray.jpg                                     baseline grayscale
  jpeg_cmyk.jpg                                     CMYK with an Adobe APP14 marker (inverted)
  jpeg_exif_thumb.jpg                               baseline 4:2:0 with an EXIF APP1 that carries
                                                    its own JPEG thumbnail (SOI..EOI inside APP1)
  png_gray16.png png_gray16_low.png png_graya16.png png_rgb16.png png_rgba16.png
                                                    16-bit PNGs (written by hand: PIL cannot
                                                    write 16-bit RGB); _low holds values 0..600, _trns
                                                    adds a tRNS chunk
  png_gray4.png png_gray1.png png_palette.png png_rgba8.png png_graya8.png   other PNG kinds
For each source `<f>`, `<f>.pil.png` is PIL's RGB decode (8-bit RGB PNG).
"""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, features

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "domain", "tests", "fixtures", "image", "decode")


def pattern(h, w, channels, seed, maxv=255):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(channels):
        g = x / max(w - 1, 1) if c % 2 == 0 else y / max(h - 1, 1)
        checker = ((x // (3 + c) + y // (4 + c)) % 2).astype(np.float64)
        noise = rng.normal(0.0, 0.05, size=(h, w))
        v = (0.5 * g + 0.4 * checker + noise) * maxv
        chans.append(np.clip(np.rint(v), 0, maxv))
    return np.stack(chans, axis=-1)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path, arr, color_type, trns=b""):
    """arr: uint16 [H, W, C]; color_type 0 gray, 4 gray+alpha, 2 RGB, 6 RGBA; bit depth 16;
    `trns`: the data of a tRNS chunk (none when empty)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + (png_chunk(b"tRNS", trns) if trns else b"") + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def exif_with_thumbnail(thumb_jpeg):
    """An EXIF APP1 payload (after the length): IFD0 empty, IFD1 pointing at `thumb_jpeg`."""
    tiff = bytearray(b"II*\x00" + struct.pack("<I", 8))
    tiff += struct.pack("<H", 0) + struct.pack("<I", 14)  # IFD0: no entries, next IFD at 14
    # IFD1 at 14: 2 entries (JPEGInterchangeFormat, JPEGInterchangeFormatLength), next 0
    thumb_off = 14 + 2 + 2 * 12 + 4
    tiff += struct.pack("<H", 2)
    tiff += struct.pack("<HHII", 0x0201, 4, 1, thumb_off)
    tiff += struct.pack("<HHII", 0x0202, 4, 1, len(thumb_jpeg))
    tiff += struct.pack("<I", 0)
    assert len(tiff) == thumb_off
    return b"Exif\x00\x00" + bytes(tiff) + thumb_jpeg


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb = Image.fromarray(pattern(48, 64, 3, 1).astype(np.uint8), "RGB")
    odd = Image.fromarray(pattern(29, 37, 3, 2).astype(np.uint8), "RGB")
    gray = Image.fromarray(pattern(40, 56, 1, 3)[:, :, 0].astype(np.uint8), "L")
    cmyk = Image.fromarray(pattern(32, 40, 4, 4).astype(np.uint8), "CMYK")
    files = []

    def save(img, name, **kw):
        img.save(os.path.join(OUT, name), **kw)
        files.append(name)

    save(rgb, "jpeg_rgb444.jpg", quality=90, subsampling=0)
    save(rgb, "jpeg_rgb422.jpg", quality=90, subsampling=1)
    save(rgb, "jpeg_rgb420.jpg", quality=90, subsampling=2)
    save(odd, "jpeg_rgb420_odd.jpg", quality=85, subsampling=2)
    save(rgb, "jpeg_progressive.jpg", quality=90, progressive=True)
    save(gray, "jpeg_gray.jpg", quality=90)
    save(cmyk, "jpeg_cmyk.jpg", quality=90)

    # EXIF thumbnail: the thumbnail's own SOI..EOI sits inside APP1, before the main image's SOS.
    tb = io.BytesIO()
    rgb.resize((16, 12)).save(tb, "JPEG", quality=75)
    main_jpeg = io.BytesIO()
    big = Image.fromarray(pattern(96, 128, 3, 5).astype(np.uint8), "RGB")
    big.save(main_jpeg, "JPEG", quality=90)
    mj = main_jpeg.getvalue()
    app1 = exif_with_thumbnail(tb.getvalue())
    seg = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    with open(os.path.join(OUT, "jpeg_exif_thumb.jpg"), "wb") as f:
        f.write(mj[:2] + seg + mj[2:])
    files.append("jpeg_exif_thumb.jpg")
    reopened = Image.open(os.path.join(OUT, "jpeg_exif_thumb.jpg"))
    assert reopened.size == (128, 96), reopened.size

    # 16-bit PNGs, values over the whole 16-bit range.
    write_png16(os.path.join(OUT, "png_gray16.png"), pattern(12, 16, 1, 6, 65535).astype(np.uint16), 0)
    write_png16(os.path.join(OUT, "png_graya16.png"), pattern(12, 16, 2, 7, 65535).astype(np.uint16), 4)
    write_png16(os.path.join(OUT, "png_rgb16.png"), pattern(12, 16, 3, 8, 65535).astype(np.uint16), 2)
    write_png16(os.path.join(OUT, "png_rgba16.png"), pattern(12, 16, 4, 9, 65535).astype(np.uint16), 6)
    # Gray 16-bit with small values: PIL clips at 255 (it does not scale).
    write_png16(os.path.join(OUT, "png_gray16_low.png"), pattern(12, 16, 1, 14, 600).astype(np.uint16), 0)
    # Gray 16-bit with a tRNS chunk (one transparent gray level): still gray in PIL.
    low = pattern(12, 16, 1, 15, 600).astype(np.uint16)
    write_png16(os.path.join(OUT, "png_gray16_trns.png"), low, 0, struct.pack(">H", int(low[0, 0, 0])))
    files += ["png_gray16_trns.png", "png_gray16.png", "png_gray16_low.png", "png_graya16.png", "png_rgb16.png", "png_rgba16.png"]

    # Other PNG kinds.
    g8 = pattern(12, 16, 1, 10)[:, :, 0].astype(np.uint8)
    save(Image.fromarray(g8, "L").convert("1"), "png_gray1.png")
    save(Image.fromarray(g8, "L"), "png_gray4.png", bits=4)
    save(Image.fromarray(pattern(12, 16, 3, 11).astype(np.uint8), "RGB").quantize(7), "png_palette.png")
    save(Image.fromarray(pattern(12, 16, 4, 12).astype(np.uint8), "RGBA"), "png_rgba8.png")
    save(Image.fromarray(pattern(12, 16, 2, 13).astype(np.uint8), "LA"), "png_graya8.png")

    for name in files:
        im = Image.open(os.path.join(OUT, name))
        mode = im.mode
        # Pixels only (PIL carries a tRNS colour into info, which an RGB PNG cannot save).
        out = Image.fromarray(np.asarray(im.convert("RGB")), "RGB")
        out.save(os.path.join(OUT, name + ".pil.png"))
        print(f"{name}: PIL mode {mode} {im.size}")
    print("Pillow", Image.__version__, "libjpeg-turbo", features.version("libjpeg_turbo"), "zlib", features.version("zlib"))


if __name__ == "__main__":
    main()
