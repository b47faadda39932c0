//! PNG files as PIL 13 opens them: which files `Image.open(f).convert("RGB")` reads (with
//! `ImageFile.LOAD_TRUNCATED_IMAGES` off, as timm and torchvision load images), which it
//! refuses, and the image data it takes from a damaged file. [`read`] applies PIL's rules
//! and returns the image data as a canonical PNG (IHDR, PLTE, one stored-deflate IDAT,
//! IEND) that the `png` crate decodes; crates/domain/tests/domain/data_image.rs checks every
//! rule against PIL's own verdicts (scripts/make_pil_verdicts.py).
//!
//! PIL's rules (PngImagePlugin and ZipDecode.c, checked by experiment):
//! - The chunks before the first IDAT are read in order: each needs its whole data and a
//!   matching CRC; a chunk type must be 4 letters, digits or `_`; IHDR must give a size
//!   above 0, filter method 0 and a bit depth / colour type pair PIL knows; the short forms
//!   of gAMA, cHRM, sRGB, pHYs, tRNS, acTL and fcTL, and an unknown compression method in
//!   zTXt or iCCP, are refused. Unknown chunks, even critical ones, are skipped.
//! - The image data is the run of IDAT chunks from the first one; their CRCs are never
//!   checked. It is read in blocks of at most 64 KiB within a chunk; the zlib stream must be
//!   valid up to the last row. The adler-32 checksum is checked only when it lies in the
//!   same block as the end of the last row. A stream that ends (checksum included) in the
//!   block that completes a row, before the last row, leaves the remaining rows zero.
//!   Anything else that stops before the last row (end of file, another chunk) is a
//!   truncated file.
//! - After the image, the chunks up to IEND are walked without CRC checks: each needs its
//!   whole data (a file that ends inside one is refused) and passes the same per-type
//!   checks; a file that ends between chunks, or without IEND, is fine.

use anyhow::{bail, Result};
use flate2::{Decompress, FlushDecompress, Status};

/// The PNG signature.
pub const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// PIL reads image data in blocks of at most this many bytes of one chunk
/// (`ImageFile.MAXBLOCK`).
const READ_BLOCK: usize = 65_536;

/// PIL's `MAX_TEXT_CHUNK`: a zTXt, iTXt or iCCP chunk that inflates to more is refused.
const MAX_TEXT_CHUNK: usize = 1 << 20;

/// Adam7 passes: (first column, first row, column step, row step).
const ADAM7: [(u64, u64, u64, u64); 7] = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
];

/// The image PIL would decode: size, format and the canonical PNG holding its data.
#[derive(Debug)]
pub struct Png {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Colour type (0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA).
    pub color_type: u8,
    /// Bits per sample.
    pub bit_depth: u8,
    /// What PIL passes over in silence and we report (rows missing from the data).
    pub note: Option<String>,
    /// A PNG of the same image with no damage, no ancillary chunk and no tRNS.
    pub canonical: Vec<u8>,
}

/// One chunk as it is in the file (its data possibly cut short by the end of the file).
struct Chunk<'a> {
    kind: [u8; 4],
    /// Offset of its length field.
    pos: usize,
    /// Declared data length.
    len: usize,
    /// The data present in the file (shorter than `len` when the file ends first).
    data: &'a [u8],
    /// The stored CRC, when all four bytes are present.
    crc: Option<u32>,
}

impl Chunk<'_> {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.kind)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    }

    /// Offset of the next chunk.
    fn next(&self) -> usize {
        self.pos.saturating_add(12).saturating_add(self.len)
    }

    fn complete(&self) -> bool {
        self.data.len() == self.len
    }
}

/// The chunk at `pos`, None when fewer than its 8 header bytes are left.
fn chunk_at(bytes: &[u8], pos: usize) -> Option<Chunk<'_>> {
    let head = bytes.get(pos..pos.checked_add(8)?)?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let start = pos + 8;
    let end = start.saturating_add(len).min(bytes.len());
    let crc = bytes
        .get(end..end + 4)
        .filter(|_| end == start + len)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")));
    Some(Chunk {
        kind: head[4..8].try_into().expect("4 bytes"),
        pos,
        len,
        data: &bytes[start..end],
        crc,
    })
}

/// PIL's `is_cid`: four ASCII letters, digits or `_`.
fn is_chunk_type(kind: &[u8; 4]) -> bool {
    kind.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// Whether PIL knows the bit depth / colour type pair (its `_MODES`).
fn known_mode(depth: u8, color: u8) -> bool {
    matches!(
        (depth, color),
        (1 | 2 | 4 | 8 | 16, 0) | (8 | 16, 2) | (1 | 2 | 4 | 8, 3) | (8 | 16, 4) | (8 | 16, 6)
    )
}

/// Samples per pixel of a colour type.
fn channels(color: u8) -> u64 {
    match color {
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1,
    }
}

/// What the chunks read so far have said (PIL's `PngStream` state).
#[derive(Default)]
struct Header {
    /// IHDR: width, height, bit depth, colour type, interlaced.
    ihdr: Option<(u32, u32, u8, u8, bool)>,
    palette: Option<Vec<u8>>,
    /// acTL's frame count, when valid.
    frames: Option<u32>,
    /// Sequence number of the last fcTL/fdAT.
    seq: Option<u32>,
    /// An fcTL came before the first IDAT.
    fctl_before_idat: bool,
    /// The region of the last fcTL: width, height, x, y.
    frame: Option<(u64, u64, u64, u64)>,
}

impl Header {
    /// The colour type and bit depth when IHDR gave a mode PIL knows.
    fn mode(&self) -> Option<(u8, u8)> {
        self.ihdr
            .filter(|&(_, _, d, c, _)| known_mode(d, c))
            .map(|(_, _, d, c, _)| (c, d))
    }

    /// Whether PIL takes the file as animated (its `is_animated`): it then stops reading
    /// after the first frame at the next fcTL.
    fn animated(&self) -> bool {
        let default_image = self.frames.is_some() && !self.fctl_before_idat;
        self.frames.unwrap_or(1) as u64 + u64::from(default_image) > 1
    }
}

/// Whether zlib data inflates to more than [`MAX_TEXT_CHUNK`] bytes (PIL's
/// `_safe_zlib_decompress` refuses that; damaged data it ignores).
fn inflates_too_large(data: &[u8]) -> bool {
    let mut d = Decompress::new(true);
    let mut out = vec![0u8; MAX_TEXT_CHUNK];
    match d.decompress(data, &mut out, FlushDecompress::Finish) {
        Ok(_) => d.total_out() as usize == MAX_TEXT_CHUNK && (d.total_in() as usize) < data.len(),
        Err(_) => false,
    }
}

/// The checks PIL's handler for one chunk makes (any position), updating `h`.
fn check_chunk(c: &Chunk, h: &mut Header) -> Result<()> {
    let d = c.data;
    let name = c.name();
    let short = |min: usize| -> Result<()> {
        if d.len() < min {
            bail!(
                "corrupt PNG: chunk `{name}` at byte {} holds {} bytes, expected at least {min} \
                 (PIL refuses a truncated {name} chunk too)",
                c.pos,
                d.len()
            );
        }
        Ok(())
    };
    let be32 = |i: usize| u32::from_be_bytes(d[i..i + 4].try_into().expect("4 bytes"));
    match &c.kind {
        b"IHDR" => {
            short(13)?;
            if d[11] != 0 {
                bail!(
                    "corrupt PNG: IHDR gives filter method {}: expected 0 (the only PNG filter \
                     method; PIL refuses it too)",
                    d[11]
                );
            }
            h.ihdr = Some((be32(0), be32(4), d[8], d[9], d[12] != 0));
        }
        b"PLTE" if h.mode().is_some_and(|(c, _)| c == 3) => h.palette = Some(d.to_vec()),
        b"tRNS" => match h.mode() {
            Some((0, _)) => short(2)?,
            Some((2, _)) => short(6)?,
            _ => {}
        },
        b"gAMA" => short(4)?,
        b"cHRM" => short(32)?,
        b"sRGB" => short(1)?,
        b"pHYs" => short(9)?,
        b"zTXt" | b"iCCP" => check_compressed_text(c)?,
        b"iTXt" => {
            // keyword \0 flag method language \0 translated keyword \0 text
            let parts: Vec<&[u8]> = d.splitn(2, |&b| b == 0).collect();
            if let [_, r] = parts.as_slice() {
                if r.len() >= 2 && r[0] != 0 && r[1] == 0 {
                    let text = r[2..].splitn(3, |&b| b == 0).nth(2);
                    if text.is_some_and(inflates_too_large) {
                        bail!(
                            "corrupt PNG: iTXt chunk at byte {} inflates to more than \
                             {MAX_TEXT_CHUNK} bytes (PIL's MAX_TEXT_CHUNK)",
                            c.pos
                        );
                    }
                }
            }
        }
        b"acTL" => {
            short(8)?;
            let n = be32(0);
            h.frames = if h.frames.is_some() || n == 0 || n > 0x8000_0000 {
                None
            } else {
                Some(n)
            };
        }
        b"fcTL" => check_fctl(c, h)?,
        _ => {}
    }
    Ok(())
}

/// zTXt and iCCP: `name \0 method data`; PIL refuses a method other than 0 and data that
/// inflates beyond [`MAX_TEXT_CHUNK`] (damaged data it ignores).
fn check_compressed_text(c: &Chunk) -> Result<()> {
    let d = c.data;
    let name = c.name();
    let (method, data) = match d.iter().position(|&b| b == 0) {
        Some(i) => (d.get(i + 1).copied(), d.get(i + 2..).unwrap_or_default()),
        // PIL: zTXt without a separator has no text (method 0); iCCP reads `s[0]`.
        None if &c.kind == b"zTXt" => (Some(0), &[][..]),
        None => (d.first().copied(), d.get(1..).unwrap_or_default()),
    };
    match method {
        None if &c.kind == b"iCCP" => bail!(
            "corrupt PNG: iCCP chunk at byte {} has no compression method byte (PIL refuses it \
             too)",
            c.pos
        ),
        Some(m) if m != 0 => bail!(
            "corrupt PNG: unknown compression method {m} in the {name} chunk at byte {}: \
             expected 0 (PIL refuses it too)",
            c.pos
        ),
        _ => {}
    }
    if inflates_too_large(data) {
        bail!(
            "corrupt PNG: {name} chunk at byte {} inflates to more than {MAX_TEXT_CHUNK} bytes \
             (PIL's MAX_TEXT_CHUNK)",
            c.pos
        );
    }
    Ok(())
}

/// An APNG frame control chunk: PIL refuses a short one, a broken sequence and a frame
/// outside the canvas; one before the first IDAT makes the IDAT image a frame.
fn check_fctl(c: &Chunk, h: &mut Header) -> Result<()> {
    let d = c.data;
    if d.len() < 26 {
        bail!(
            "corrupt PNG: APNG fcTL chunk at byte {} holds {} bytes, expected 26 (PIL refuses \
             it too)",
            c.pos,
            d.len()
        );
    }
    let be32 = |i: usize| u32::from_be_bytes(d[i..i + 4].try_into().expect("4 bytes")) as u64;
    let seq = be32(0) as u32;
    let expected = h.seq.map_or(0, |s| s.wrapping_add(1));
    if seq != expected {
        bail!(
            "corrupt PNG: APNG frame sequence error at byte {} (fcTL number {seq}, expected \
             {expected}; PIL refuses it too)",
            c.pos
        );
    }
    h.seq = Some(seq);
    let (w, ht) = h.ihdr.map_or((0, 0), |i| (i.0 as u64, i.1 as u64));
    let (fw, fh, x, y) = (be32(4), be32(8), be32(12), be32(16));
    if x + fw > w || y + fh > ht {
        bail!(
            "corrupt PNG: APNG frame at byte {} ({fw}x{fh} at {x},{y}) lies outside the \
             {w}x{ht} canvas (PIL refuses it too)",
            c.pos
        );
    }
    h.frame = Some((fw, fh, x, y));
    Ok(())
}

/// Walks the chunks before the first IDAT as PIL's `_open` does; returns what they said and
/// the offset of the first IDAT chunk.
fn read_header(bytes: &[u8]) -> Result<(Header, usize)> {
    let mut h = Header::default();
    let mut pos = SIGNATURE.len();
    loop {
        let Some(c) = chunk_at(bytes, pos) else {
            bail!(
                "truncated PNG: the file ends at byte {} before the image data (expected \
                 chunks up to an IDAT chunk; PIL cannot identify it either)",
                bytes.len()
            );
        };
        let name = c.name();
        if !is_chunk_type(&c.kind) {
            bail!(
                "corrupt PNG: the chunk at byte {pos} has type `{name}`: expected 4 letters or \
                 digits (the file is damaged; PIL refuses it too)"
            );
        }
        match &c.kind {
            b"IDAT" => return Ok((h, pos)),
            b"IEND" => bail!(
                "corrupt PNG: IEND at byte {pos} comes before any IDAT chunk: the file holds no \
                 image data (PIL refuses it too)"
            ),
            b"fdAT" => bail!(
                "unsupported PNG: APNG frame data (fdAT) at byte {pos} before the default image \
                 (IDAT): expected an IDAT chunk first"
            ),
            _ => {}
        }
        if !c.complete() {
            bail!(
                "truncated PNG: chunk `{name}` at byte {pos} declares {} data bytes but the file \
                 ends at byte {} (PIL refuses it too)",
                c.len,
                bytes.len()
            );
        }
        check_chunk(&c, &mut h)?;
        if c.kind == *b"fcTL" {
            h.fctl_before_idat = true;
        }
        let Some(stored) = c.crc else {
            bail!(
                "truncated PNG: the file ends inside the CRC of chunk `{name}` at byte {pos} \
                 (PIL refuses it too)"
            );
        };
        let mut crc = flate2::Crc::new();
        crc.update(&c.kind);
        crc.update(c.data);
        if crc.sum() != stored {
            bail!(
                "corrupt PNG: CRC mismatch in chunk `{name}` at byte {pos} (stored \
                 0x{stored:08x}, computed 0x{:08x}): the file is damaged (PIL refuses a CRC \
                 error in the chunks before the image data; it does not check IDAT and later \
                 chunks, nor do we)",
                crc.sum()
            );
        }
        pos = c.next();
    }
}

/// Checks the header PIL found before the image data: a known mode, a size above 0, no
/// APNG frame region other than the whole canvas. Returns (width, height, bit depth,
/// colour type, interlaced).
fn check_header(h: &Header) -> Result<(u32, u32, u8, u8, bool)> {
    let Some((w, ht, depth, color, interlaced)) = h.ihdr else {
        bail!("corrupt PNG: no IHDR chunk before the image data (PIL cannot identify it either)");
    };
    if !known_mode(depth, color) {
        bail!(
            "unsupported PNG: bit depth {depth} with colour type {color} is not a PNG format \
             (PIL cannot identify it either)"
        );
    }
    if w == 0 || ht == 0 {
        bail!("corrupt PNG: the image is {w}x{ht}: expected a width and height above 0");
    }
    if let Some((fw, fh, x, y)) = h.frame.filter(|_| h.fctl_before_idat) {
        if (fw, fh, x, y) != (w as u64, ht as u64, 0, 0) {
            bail!(
                "unsupported PNG: the APNG's first frame is {fw}x{fh} at {x},{y}, not the whole \
                 {w}x{ht} canvas (the APNG format requires the whole canvas)"
            );
        }
    }
    Ok((w, ht, depth, color, interlaced))
}

/// Bytes of the filtered image data PIL reads (filter byte + packed samples per row, for
/// each non-empty Adam7 pass when interlaced).
fn rows_len(w: u32, h: u32, bits: u64, interlaced: bool) -> u64 {
    let mut n = 0u64;
    row_ends(w, h, bits, interlaced, &mut |_, rows, row| n += rows * row);
    n
}

/// Calls `f(start, rows, row bytes)` for each run of equal rows (the whole image, or each
/// non-empty pass), `start` being the offset of its first row.
fn row_ends(w: u32, h: u32, bits: u64, interlaced: bool, f: &mut dyn FnMut(u64, u64, u64)) {
    let (w, h) = (w as u64, h as u64);
    let passes: &[(u64, u64, u64, u64)] = if interlaced { &ADAM7 } else { &[(0, 0, 1, 1)] };
    let mut start = 0u64;
    for &(x0, y0, dx, dy) in passes {
        let (pw, ph) = ((w + dx - 1 - x0) / dx, (h + dy - 1 - y0) / dy);
        if pw == 0 || ph == 0 {
            continue;
        }
        let row = 1 + (pw * bits).div_ceil(8);
        f(start, ph, row);
        start += ph * row;
    }
}

/// Whether `n` bytes of filtered data end exactly at the end of a row.
fn at_row_end(w: u32, h: u32, bits: u64, interlaced: bool, n: u64) -> bool {
    let mut hit = false;
    row_ends(w, h, bits, interlaced, &mut |start, rows, row| {
        hit |= n > start && n <= start + rows * row && (n - start).is_multiple_of(row);
    });
    hit
}

/// One block of image data as PIL reads it, and the offset of the chunk after its own.
struct Block<'a> {
    data: &'a [u8],
    next_chunk: usize,
}

/// The image data from the first IDAT chunk at `first`: the run of IDAT (and, as PIL reads
/// them, fdAT/DDAT) chunks, each cut at the end of the file, in blocks of [`READ_BLOCK`].
fn data_blocks(bytes: &[u8], first: usize) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut pos = first;
    while let Some(c) = chunk_at(bytes, pos) {
        let data = match &c.kind {
            b"IDAT" | b"DDAT" => c.data,
            b"fdAT" => c.data.get(4..).unwrap_or_default(),
            _ => break,
        };
        for piece in data.chunks(READ_BLOCK) {
            out.push(Block {
                data: piece,
                next_chunk: c.next(),
            });
        }
        if !c.complete() {
            break;
        }
        pos = c.next();
    }
    out
}

/// Inflates the image data as PIL's zip decoder does (see the module docs) into exactly
/// `need` bytes; returns them, how many came from the file (the rest are zero rows), and
/// the offset of the chunk after the one in which the image ended.
fn inflate(
    blocks: &[Block],
    need: u64,
    at_row: &dyn Fn(u64) -> bool,
) -> Result<(Vec<u8>, u64, usize)> {
    let mut z = Decompress::new(true);
    let mut out = vec![0u8; need as usize];
    let mut produced = 0usize;
    let broken = |e: flate2::DecompressError, produced: usize| {
        anyhow::anyhow!(
            "corrupt PNG: the compressed image data is damaged after {produced} of {need} bytes \
             (zlib: {e}) (PIL refuses it too: broken data stream)"
        )
    };
    for b in blocks {
        let mut input = b.data;
        let before = produced;
        loop {
            if produced as u64 == need {
                look_past_end(&mut z, input).map_err(|e| broken(e, produced))?;
                return Ok((out, need, b.next_chunk));
            }
            let (i0, o0) = (z.total_in(), z.total_out());
            let status = z
                .decompress(input, &mut out[produced..], FlushDecompress::None)
                .map_err(|e| broken(e, produced))?;
            let used = (z.total_in() - i0) as usize;
            let made = (z.total_out() - o0) as usize;
            input = &input[used..];
            produced += made;
            if status == Status::StreamEnd && (produced as u64) < need {
                // PIL stops at the end of the stream only in a block that completed a row.
                if produced > before && at_row(produced as u64) {
                    return Ok((out, produced as u64, b.next_chunk));
                }
                bail!(
                    "truncated PNG: the compressed image data ends after {produced} of {need} \
                     bytes, inside a row (PIL refuses it too: image file is truncated)"
                );
            }
            if used == 0 && made == 0 {
                break;
            }
        }
    }
    if produced as u64 == need {
        // Completed at the very end of the data: nothing more for zlib to look at.
        let next = blocks.last().map_or(0, |b| b.next_chunk);
        return Ok((out, need, next));
    }
    bail!(
        "truncated PNG: the image data ends after {produced} of {need} bytes (the file ends, \
         or another chunk follows the IDAT chunks; PIL refuses it too: image file is truncated)"
    )
}

/// After the last row, in the same block: what zlib still reads without room for output
/// (the end of the deflate stream and the adler-32 checksum, when present) must be valid.
fn look_past_end(
    z: &mut Decompress,
    mut input: &[u8],
) -> std::result::Result<(), flate2::DecompressError> {
    let mut one = [0u8; 1];
    loop {
        let (i0, o0) = (z.total_in(), z.total_out());
        let status = z.decompress(input, &mut one, FlushDecompress::None)?;
        let used = (z.total_in() - i0) as usize;
        input = &input[used..];
        // More data than the image needs (PIL stops there), the end, or nothing left.
        if z.total_out() > o0 || status == Status::StreamEnd || used == 0 {
            return Ok(());
        }
    }
}

/// Walks the chunks after the image data as PIL's `load_end` does, from `pos`: up to IEND
/// (or, in an animation, the next frame's fcTL), each needing its whole data and passing
/// the per-type checks; CRCs are not checked; the file may end between chunks.
fn read_after(bytes: &[u8], mut pos: usize, h: &mut Header) -> Result<()> {
    let animated = h.animated();
    while let Some(c) = chunk_at(bytes, pos) {
        if !is_chunk_type(&c.kind) || c.kind == *b"IEND" || (animated && c.kind == *b"fcTL") {
            return Ok(());
        }
        if !c.complete() {
            bail!(
                "truncated PNG: chunk `{}` at byte {pos}, after the image data, declares {} data \
                 bytes but the file ends at byte {} (PIL refuses it too: Truncated File Read)",
                c.name(),
                c.len,
                bytes.len()
            );
        }
        check_chunk(&c, h)?;
        pos = c.next();
    }
    Ok(())
}

/// A PNG chunk with its CRC.
fn put_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// Adler-32 of `data`.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for block in data.chunks(5552) {
        for &x in block {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// `raw` as a zlib stream of stored (uncompressed) deflate blocks.
fn stored_zlib(raw: &[u8]) -> Vec<u8> {
    let mut z = Vec::with_capacity(raw.len() + raw.len() / 65535 * 5 + 16);
    z.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = raw.chunks(65535).peekable();
    if blocks.peek().is_none() {
        z.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(b) = blocks.next() {
        z.push(u8::from(blocks.peek().is_none()));
        let n = b.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(b);
    }
    z.extend_from_slice(&adler32(raw).to_be_bytes());
    z
}

/// The canonical PNG of the image: IHDR (compression, filter and interlace methods 0/0/0|1),
/// PLTE padded to 256 entries (PIL shows an index beyond the palette, or any index with no
/// palette, as black), the data as stored deflate in IDAT chunks of at most 1 GiB, IEND.
fn canonical(
    w: u32,
    h: u32,
    depth: u8,
    color: u8,
    interlaced: bool,
    palette: Option<&[u8]>,
    raw: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 60000 * 5 + 1024);
    out.extend_from_slice(SIGNATURE);
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, u8::from(interlaced)]);
    put_chunk(&mut out, b"IHDR", &ihdr);
    if color == 3 {
        let mut plte = vec![0u8; 768];
        let p = palette.unwrap_or_default();
        let n = (p.len() / 3 * 3).min(768);
        plte[..n].copy_from_slice(&p[..n]);
        put_chunk(&mut out, b"PLTE", &plte);
    }
    for part in stored_zlib(raw).chunks(1 << 30) {
        put_chunk(&mut out, b"IDAT", part);
    }
    put_chunk(&mut out, b"IEND", &[]);
    out
}

/// Reads a PNG (`bytes` start with [`SIGNATURE`]) as PIL does: refuses what PIL refuses
/// (the error says what is wrong, where, and that PIL refuses it too), and returns the
/// image PIL decodes. `check_size(width, height)` runs once the size is known, before any
/// image data is read (the decompression-bomb check).
pub fn read(bytes: &[u8], check_size: &dyn Fn(u64, u64) -> Result<()>) -> Result<Png> {
    let (mut h, first) = read_header(bytes)?;
    let (w, ht, depth, color, interlaced) = check_header(&h)?;
    check_size(w as u64, ht as u64)?;
    let bits = channels(color) * depth as u64;
    let need = rows_len(w, ht, bits, interlaced);
    let blocks = data_blocks(bytes, first);
    let at_row = |n: u64| at_row_end(w, ht, bits, interlaced, n);
    let (raw, got, next) = inflate(&blocks, need, &at_row)?;
    read_after(bytes, next, &mut h)?;
    let note = (got < need).then(|| {
        format!(
            "the compressed image data ends after {got} of {need} bytes, at the end of a row: \
             the rest of the image is decoded as zeros (black, or palette entry 0), as PIL \
             does without a warning"
        )
    });
    let canonical = canonical(w, ht, depth, color, interlaced, h.palette.as_deref(), &raw);
    Ok(Png {
        width: w,
        height: ht,
        color_type: color,
        bit_depth: depth,
        note,
        canonical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn row_layout_plain_and_adam7() {
        // 16x12 RGB: 12 rows of 1 + 48 bytes.
        assert_eq!(rows_len(16, 12, 24, false), 12 * 49);
        assert!(at_row_end(16, 12, 24, false, 49 * 6));
        assert!(!at_row_end(16, 12, 24, false, 49 * 6 + 1));
        assert!(!at_row_end(16, 12, 24, false, 0));
        // 3x1 8-bit gray, Adam7: pass 1 holds x 0, pass 4 (start column 2, step 4) x 2,
        // pass 6 (start column 1, step 2) x 1; passes with no row (start row beyond 0) or no
        // column are skipped.
        let mut runs = Vec::new();
        row_ends(3, 1, 8, true, &mut |s, r, l| runs.push((s, r, l)));
        assert_eq!(runs, [(0, 1, 2), (2, 1, 2), (4, 1, 2)]);
        assert_eq!(rows_len(3, 1, 8, true), 6);
        // 1-bit rows round up to whole bytes.
        assert_eq!(rows_len(9, 2, 1, false), 2 * (1 + 2));
    }

    #[test]
    fn stored_zlib_round_trips_and_adler_is_zlibs() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        for n in [0usize, 1, 65_535, 65_536, 200_000] {
            let raw: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let z = stored_zlib(&raw);
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&z[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, raw, "{n} bytes");
        }
    }

    #[test]
    fn chunk_types_pil_accepts() {
        assert!(is_chunk_type(b"IDAT") && is_chunk_type(b"prV_") && is_chunk_type(b"a1B2"));
        assert!(!is_chunk_type(b"a-b!") && !is_chunk_type(b"ab c"));
        assert!(known_mode(16, 4) && known_mode(2, 3) && !known_mode(4, 2) && !known_mode(16, 3));
    }
}
