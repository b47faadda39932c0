#!/usr/bin/env python3
"""Writes crates/domain/tests/fixtures/image/verdicts/: small JPEG and PNG files, damaged or unusual in the
ways files from the field are, and PIL's verdict on each (verdicts.tsv). crates/domain/tests/domain/data_image.rs
decodes every file with crates/domain/src/data/image.rs and requires the same verdict: the
files PIL opens decode to PIL's exact pixels (blake3 of `Image.open(f).convert("RGB")`
bytes), the files PIL refuses are refused. Tests never run this script; its output is
committed.

How they were made:
    python3 -m venv /work/venv-data && /work/venv-data/bin/pip install pillow numpy blake3
    /work/venv-data/bin/python scripts/make_pil_verdicts.py
(Pillow 13.0.0 with libjpeg-turbo 3.2.0 and zlib 1.2.13, as the script prints.)

PIL is run as timm and torchvision run it: `ImageFile.LOAD_TRUNCATED_IMAGES = False` (the
default), `Image.MAX_IMAGE_PIXELS` at its default (89,478,485). verdicts.tsv columns:
    file, verdict (ok | refused), width, height, blake3 of the RGB bytes (ok only),
    what PIL said (the exception, or the mode and any warning)
"""
import io
import os
import struct
import warnings
import zlib

import blake3
import numpy as np
from PIL import Image, ImageFile, features

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "domain", "tests", "fixtures", "image", "verdicts")
SIG = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7: (first column, first row, column step, row step) per pass.
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def chunk(kind, data, bad_crc=False):
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    if bad_crc:
        crc ^= 0xDEADBEEF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def ihdr(w, h, depth=8, ct=2, interlace=0, filt=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ct, 0, filt, interlace))


def pixels(w, h, ct, depth=8):
    """A deterministic pattern, one sample per (row, column, channel), `depth` bits."""
    ch = CHANNELS[ct]
    y, x, c = np.mgrid[0:h, 0:w, 0:ch]
    v = (x * 37 + y * 101 + c * 59 + (x // 3) * (y // 2) * 7) % 251
    if ct == 3:
        v = (x + 2 * y) % 5
    if depth == 16:
        return (v * 257 + (x * 13 + y) % 256).astype(">u2")
    if depth < 8:
        return (v % (1 << depth)).astype(np.uint8)
    return v.astype(np.uint8)


def pack_row(samples, depth):
    """Bytes of one scanline (without the filter byte) of `samples` (flat) at `depth` bits."""
    if depth == 16:
        return samples.astype(">u2").tobytes()
    if depth == 8:
        return samples.astype(np.uint8).tobytes()
    bits = "".join(format(int(s), f"0{depth}b") for s in samples)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def raw_stream(px, depth, interlace=False, filt=0):
    """The filtered scanlines (filter type `filt`, 0 or 1 only when 0) of `px` [h, w, ch]."""
    h, w, _ = px.shape
    rows = []
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    for (x0, y0, dx, dy) in passes:
        sub = px[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        for r in sub:
            rows.append(bytes([filt]) + pack_row(r.reshape(-1), depth))
    return b"".join(rows)


def png(w=16, h=12, ct=2, depth=8, interlace=0, before=b"", after=b"", z=None, plte=None):
    """A PNG: IHDR, `before`, PLTE (palette types), IDAT, `after`, IEND."""
    if z is None:
        z = zlib.compress(raw_stream(pixels(w, h, ct, depth), depth, bool(interlace)), 9)
    if ct == 3 and plte is None:
        plte = bytes([10, 20, 30, 200, 40, 60, 90, 250, 120, 30, 160, 70, 255, 255, 0])
    p = chunk(b"PLTE", plte) if plte is not None else b""
    return SIG + ihdr(w, h, depth, ct, interlace) + before + p + chunk(b"IDAT", z) + after + chunk(b"IEND", b"")


def chunks(data):
    """(type, offset of the length field, data length) of every whole chunk."""
    pos, out = 8, []
    while pos + 8 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append((data[pos + 4:pos + 8], pos, n))
        pos += 12 + n
    return out


def find(data, kind, nth=0):
    return [c for c in chunks(data) if c[0] == kind][nth]


def split_idat(data, parts, bad=None):
    """`data` with its one IDAT split into `parts` IDAT chunks; chunk `bad` gets a bad CRC."""
    _, pos, n = find(data, b"IDAT")
    z = data[pos + 8:pos + 8 + n]
    step = -(-len(z) // parts)
    idats = b"".join(chunk(b"IDAT", z[i * step:(i + 1) * step], bad_crc=(i == bad)) for i in range(parts))
    return data[:pos] + idats + data[pos + 12 + n:]


def corrupt_crc(data, kind, nth=0):
    _, pos, n = find(data, kind, nth)
    b = bytearray(data)
    b[pos + 8 + n] ^= 0xFF
    return bytes(b)


def palette_trns():
    """A palette PNG whose tRNS makes entry 0 half transparent."""
    p = png(ct=3)
    _, pos, _ = find(p, b"IDAT")
    return p[:pos] + chunk(b"tRNS", b"\x80") + p[pos:]


def text(k, v):
    return chunk(b"tEXt", k + b"\x00" + v)


def png_cases():
    c = {}
    base = png()
    raw = raw_stream(pixels(16, 12, 2), 8)
    z = zlib.compress(raw, 9)
    c["png_ok.png"] = base
    # CRC mismatches: PIL checks the chunks before the first IDAT, not IDAT or later ones.
    c["crc_ihdr.png"] = corrupt_crc(base, b"IHDR")
    c["crc_plte.png"] = corrupt_crc(png(ct=3), b"PLTE")
    c["crc_trns.png"] = corrupt_crc(palette_trns(), b"tRNS")
    c["crc_text_before_idat.png"] = png(before=chunk(b"tEXt", b"Title\x00cat", bad_crc=True))
    c["crc_gama.png"] = png(before=chunk(b"gAMA", struct.pack(">I", 45455), bad_crc=True))
    c["crc_private_before_idat.png"] = png(before=chunk(b"prVt", b"xyz", bad_crc=True))
    c["crc_idat.png"] = corrupt_crc(base, b"IDAT")
    c["crc_idat_first_of_3.png"] = split_idat(base, 3, bad=0)
    c["crc_idat_last_of_3.png"] = split_idat(base, 3, bad=2)
    c["crc_iend.png"] = corrupt_crc(base, b"IEND")
    c["crc_text_after_idat.png"] = png(after=chunk(b"tEXt", b"Title\x00cat", bad_crc=True))
    # The zlib stream: adler32 checked when present; the data may end with the last row.
    zb = bytearray(z)
    zb[-1] ^= 0xFF
    c["adler_bad.png"] = png(z=bytes(zb))
    c["adler_missing.png"] = png(z=z[:-4])
    c["deflate_corrupt.png"] = png(z=z[:2] + bytes([0xFF] * 8) + z[10:])
    c["zlib_header_bad.png"] = png(z=b"\x00\x00" + z[2:])
    c["stream_short_at_row.png"] = png(z=zlib.compress(raw[:6 * 49], 9))
    c["stream_short_mid_row.png"] = png(z=zlib.compress(raw[:100], 9))
    c["stream_empty.png"] = png(z=zlib.compress(b"", 9))
    c["stream_long.png"] = png(z=zlib.compress(raw + raw[:98], 9))
    c["stream_trailing_bytes.png"] = png(z=z + b"\x01\x02\x03")
    c["filter_type_bad.png"] = png(z=zlib.compress(raw[:3 * 49] + b"\x05" + raw[3 * 49 + 1:], 9))
    # Truncation: PIL needs the image data, not what follows it.
    _, ip, il = find(base, b"IDAT")
    c["trunc_mid_idat.png"] = base[:ip + 8 + il // 2]
    c["trunc_idat_last_byte.png"] = base[:ip + 8 + il - 1]
    c["trunc_before_idat_crc.png"] = base[:ip + 8 + il]
    c["trunc_no_iend.png"] = base[:-12]
    c["trunc_half_iend.png"] = base[:-6]
    c["trunc_in_ihdr.png"] = base[:20]
    c["trunc_signature_only.png"] = base[:8]
    withtext = png(before=text(b"Comment", b"x" * 40))
    _, tp, tl = find(withtext, b"tEXt")
    c["trunc_in_text_before_idat.png"] = withtext[:tp + 8 + tl // 2]
    after = png(after=text(b"Comment", b"x" * 40))
    _, tp, tl = find(after, b"tEXt")
    c["trunc_in_text_after_idat.png"] = after[:tp + 8 + tl // 2]
    c["trunc_in_chunk_header_after_idat.png"] = after[:tp + 5]
    three = split_idat(base, 3)
    _, p3, l3 = find(three, b"IDAT", 2)
    c["trunc_mid_last_of_3_idat.png"] = three[:p3 + 8 + l3 // 2]
    c["trailing_garbage.png"] = base + b"garbage after IEND"
    # The adler-32 checksum alone in a second IDAT chunk: PIL has the whole image before it
    # reads that chunk, so it does not check the checksum, but it needs the chunk's data.
    zb2 = bytearray(z)
    zb2[-1] ^= 0xFF
    own = SIG + ihdr(16, 12) + chunk(b"IDAT", z[:-4]) + chunk(b"IDAT", bytes(zb2[-4:])) + chunk(b"IEND", b"")
    c["adler_bad_in_own_chunk.png"] = own
    c["adler_in_own_chunk_cut.png"] = own[:-12 - 4 - 2]
    c["idat_split_by_text.png"] = (SIG + ihdr(16, 12) + chunk(b"IDAT", z[:100]) + text(b"a", b"b")
                                   + chunk(b"IDAT", z[100:]) + chunk(b"IEND", b""))
    c["idat_empty_chunks.png"] = (SIG + ihdr(16, 12) + chunk(b"IDAT", b"") + chunk(b"IDAT", z)
                                  + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    # Chunk structure.
    c["chunk_type_invalid.png"] = png(before=chunk(b"a-b!", b"xyz"))
    c["chunk_unknown_critical.png"] = png(before=chunk(b"XYZW", b"xyz"))
    c["ihdr_after_text.png"] = SIG + text(b"a", b"b") + ihdr(16, 12) + chunk(b"IDAT", z) + chunk(b"IEND", b"")
    c["ihdr_missing.png"] = SIG + chunk(b"IDAT", z) + chunk(b"IEND", b"")
    c["iend_before_idat.png"] = SIG + ihdr(16, 12) + chunk(b"IEND", b"") + chunk(b"IDAT", z)
    c["ihdr_short.png"] = SIG + chunk(b"IHDR", struct.pack(">IIBB", 16, 12, 8, 2)) + chunk(b"IDAT", z) + chunk(b"IEND", b"")
    c["ihdr_filter_method_1.png"] = SIG + ihdr(16, 12, filt=1) + chunk(b"IDAT", z) + chunk(b"IEND", b"")
    c["ihdr_compression_method_1.png"] = (SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 12, 8, 2, 1, 0, 0))
                                          + chunk(b"IDAT", z) + chunk(b"IEND", b""))
    c["ihdr_interlace_2.png"] = (SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 12, 8, 2, 0, 0, 2))
                                 + chunk(b"IDAT", zlib.compress(raw_stream(pixels(16, 12, 2), 8, True), 9)) + chunk(b"IEND", b""))
    c["ihdr_depth_rgb4.png"] = SIG + ihdr(16, 12, depth=4) + chunk(b"IDAT", z) + chunk(b"IEND", b"")
    c["ihdr_width_0.png"] = SIG + ihdr(0, 12) + chunk(b"IDAT", zlib.compress(b"\x00" * 12)) + chunk(b"IEND", b"")
    exif = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    c["exif_orientation_6.png"] = png(w=16, h=8, before=chunk(b"eXIf", exif))
    c["gama_short.png"] = png(before=chunk(b"gAMA", b"\x00\x01"))
    c["gama_short_after_idat.png"] = png(after=chunk(b"gAMA", b"\x00\x01"))
    c["phys_short.png"] = png(before=chunk(b"pHYs", b"\x00" * 5))
    c["chrm_short.png"] = png(before=chunk(b"cHRM", b"\x00" * 8))
    c["srgb_empty.png"] = png(before=chunk(b"sRGB", b""))
    c["trns_short_rgb.png"] = png(before=chunk(b"tRNS", b"\x00\x01"))
    c["ztxt_method_1.png"] = png(before=chunk(b"zTXt", b"k\x00\x01" + zlib.compress(b"v")))
    c["ztxt_method_1_after_idat.png"] = png(after=chunk(b"zTXt", b"k\x00\x01" + zlib.compress(b"v")))
    c["ztxt_corrupt.png"] = png(before=chunk(b"zTXt", b"k\x00\x00garbage"))
    c["iccp_method_1.png"] = png(before=chunk(b"iCCP", b"p\x00\x01" + zlib.compress(b"v")))
    c["iccp_corrupt.png"] = png(before=chunk(b"iCCP", b"p\x00\x00garbage"))
    c["itxt_corrupt.png"] = png(before=chunk(b"iTXt", b"k\x00\x01\x00\x00\x00garbage"))
    # Colour types, depths, palettes, interlacing.
    c["palette_index_beyond_plte.png"] = png(ct=3, plte=bytes([10, 20, 30, 40, 50, 60]))
    c["palette_without_plte.png"] = SIG + ihdr(16, 12, 8, 3) + chunk(b"IDAT", zlib.compress(raw_stream(pixels(16, 12, 3), 8), 9)) + chunk(b"IEND", b"")
    c["palette_2bit_interlaced.png"] = png(ct=3, depth=2, interlace=1)
    c["palette_trns.png"] = palette_trns()
    c["gray8_trns.png"] = png(ct=0, before=chunk(b"tRNS", b"\x00\x25"))
    c["gray2.png"] = png(ct=0, depth=2)
    c["graya8.png"] = png(ct=4)
    c["rgb8_interlaced.png"] = png(interlace=1)
    c["rgba16_interlaced.png"] = png(ct=6, depth=16, interlace=1)
    c["graya16.png"] = png(ct=4, depth=16)
    c["gray16_trns.png"] = png(ct=0, depth=16, before=chunk(b"tRNS", b"\x01\x00"))
    ri = raw_stream(pixels(16, 12, 2), 8, True)
    c["interlaced_short_at_row.png"] = png(interlace=1, z=zlib.compress(ri[:len(ri) // 2 - (len(ri) // 2) % 7], 9))
    c["interlaced_trunc_mid_idat.png"] = png(interlace=1)[:-40]
    # Sizes: no limit on a side; PIL's decompression-bomb limits on the pixel count.
    wide_raw = raw_stream(np.zeros((8, 20000, 1), np.uint8) + 90, 8)
    c["wide_20000x8.png"] = png(20000, 8, ct=0, z=zlib.compress(wide_raw, 9))
    tall_raw = raw_stream(np.zeros((20000, 8, 3), np.uint8) + 7, 8)
    c["tall_8x20000.png"] = png(8, 20000, z=zlib.compress(tall_raw, 9))
    c["bomb_13000x13767.png"] = png(13000, 13767, ct=0, z=zlib.compress(b"\x00" * 13001, 9))
    c["bomb_100000x100000.png"] = png(100000, 100000, ct=0, z=zlib.compress(b"\x00" * 100001, 9))
    # APNG: PIL's first frame is the IDAT image.
    f1 = Image.fromarray(pixels(12, 10, 2), "RGB")
    f2 = Image.fromarray(255 - pixels(12, 10, 2), "RGB")
    b = io.BytesIO()
    f1.save(b, "PNG", save_all=True, append_images=[f2], duration=100)
    c["apng_2_frames.png"] = b.getvalue()
    return c


def jpeg(img, **kw):
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def markers(data, code):
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == code]


def exif_orientation(value):
    """An EXIF APP1 segment with Orientation = `value`."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, value, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_cases():
    c = {}
    rgb = Image.fromarray(pixels(40, 24, 2), "RGB")
    ok = jpeg(rgb, quality=90)
    c["jpeg_ok.jpg"] = ok
    c["jpeg_trunc_half.jpg"] = ok[:len(ok) // 2]
    c["jpeg_no_eoi.jpg"] = ok[:-2]
    c["jpeg_trailing_garbage.jpg"] = ok + b"garbage after the end marker"
    sos = markers(ok, 0xDA)[-1]
    c["jpeg_scan_cut_eoi_appended.jpg"] = ok[:(sos + len(ok)) // 2] + b"\xff\xd9"
    eoi = markers(ok, 0xD9)[-1]
    c["jpeg_extraneous_bytes.jpg"] = ok[:eoi] + b"\x12\x34\x56" + ok[eoi:]
    c["jpeg_exif_orientation_6.jpg"] = ok[:2] + exif_orientation(6) + ok[2:]
    gray = Image.fromarray(np.full((8, 20000), 77, np.uint8), "L")
    c["jpeg_wide_20000x8.jpg"] = jpeg(gray, quality=50)
    sof = markers(ok, 0xC0)[0]
    bomb = bytearray(ok)
    bomb[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    c["jpeg_bomb_60000x60000.jpg"] = bytes(bomb)
    c["jpeg_cmyk.jpg"] = jpeg(Image.fromarray(pixels(20, 16, 6), "CMYK"), quality=90)
    # Not images at all, with image names.
    c["appledouble_sidecar.jpg"] = (b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        "
                                    + b"\x00\x02" + b"\x00" * 60)
    c["empty.png"] = b""
    c["text_named.png"] = b"not an image at all\n"
    return c


def verdict(path):
    """PIL's verdict as timm/torchvision reach it: open, convert("RGB")."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    name = os.path.basename(path)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            with Image.open(path) as im:
                mode = im.mode
                rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        said = f"mode {mode}" + "".join(f"; {w.category.__name__}: {w.message}" for w in ws)
        h, w = rgb.shape[:2]
        return ("ok", w, h, blake3.blake3(rgb.tobytes()).hexdigest(), said)
    except Exception as e:  # noqa: BLE001 (every refusal is a verdict)
        msg = str(e).replace(path, name).replace(os.path.abspath(path), name)
        return ("refused", "", "", "", f"{type(e).__name__}: {msg}")


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    cases = {**png_cases(), **jpeg_cases()}
    rows = []
    for name, data in sorted(cases.items()):
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(data)
        v = verdict(path)
        rows.append("\t".join([name, v[0], str(v[1]), str(v[2]), v[3], v[4].replace("\t", " ").replace("\n", " ")]))
        print(f"{name:40s} {v[0]:8s} {v[4][:110]}")
    with open(os.path.join(OUT, "verdicts.tsv"), "w") as f:
        f.write("file\tverdict\twidth\theight\tblake3_rgb\tpil\n")
        f.write("\n".join(rows) + "\n")
    total = sum(len(d) for d in cases.values())
    print(f"{len(cases)} files, {total} bytes")
    print("Pillow", Image.__version__, "libjpeg-turbo", features.version("libjpeg_turbo"), "zlib", features.version("zlib"))


if __name__ == "__main__":
    main()
