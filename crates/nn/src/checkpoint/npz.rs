//! Bounded reading of NumPy `.npz` archives (zip of `.npy` files) as f32 tensors.
//!
//! Float arrays (f16/f32/f64, either byte order, C or Fortran order) become f32
//! tensors, each counted for non-finite values. Entries of other dtypes (step
//! counters, booleans, strings, pickled objects, structured records) are not
//! parameters: they are listed as skipped with their dtype, and their data is never
//! read (pickles are never unpickled).
//!
//! Nothing is extracted to disk. Each entry's `.npy` header is parsed first (a
//! small dedicated parser for the `{'descr': .., 'fortran_order': .., 'shape': (..)}`
//! literal, with every size computed with overflow checks), and its declared
//! `shape x dtype` must equal the entry's uncompressed size before any data is
//! read. Entry count, per-entry size, total size and the compression ratio are
//! bounded, so a crafted archive cannot make the reader allocate without limit.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::NonFinite;

/// Most entries an archive may have.
const MAX_ENTRIES: usize = 100_000;
/// Largest single array, in bytes of stored data.
const MAX_ENTRY_BYTES: u64 = 4 << 30;
/// Largest sum of all arrays, in bytes.
const MAX_TOTAL_BYTES: u64 = super::MAX_CHECKPOINT_BYTES;
/// Largest `.npy` header text.
const MAX_HEADER_BYTES: usize = 1 << 16;
/// Deflate cannot expand data by more than ~1032x; anything claiming more is forged.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Element type of an array, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    F16,
    F32,
    F64,
}

/// A parsed `.npy` header of a float array.
#[derive(Debug, Clone, PartialEq)]
struct NpyHeader {
    elem: Elem,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl NpyHeader {
    fn item_size(&self) -> u64 {
        match self.elem {
            Elem::F16 => 2,
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }
    /// Stored data size in bytes, `None` on overflow.
    fn data_bytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.item_size(), |acc, &d| acc.checked_mul(d as u64))
    }
}

/// A value of the header's Python literal.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// A list (the `descr` of a structured dtype), kept as its text.
    List(String),
}

/// Parses the Python dict literal of an `.npy` header.
fn parse_header_dict(text: &str) -> Result<BTreeMap<String, Lit>> {
    let mut p = LitParser {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let mut out = BTreeMap::new();
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        p.skip_ws();
        let value = match p.peek() {
            Some(b'\'') | Some(b'"') => Lit::Str(p.string()?),
            Some(b'(') => Lit::Tuple(p.tuple()?),
            Some(b'T') | Some(b'F') => Lit::Bool(p.boolean()?),
            Some(b'[') => Lit::List(p.list_text()?),
            other => bail!(
                "unexpected {:?} at byte {} of the header",
                other.map(|b| b as char),
                p.i
            ),
        };
        out.insert(key, value);
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        bail!("trailing bytes after the header dict");
    }
    Ok(out)
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        if !self.eat(c) {
            bail!("expected '{}' at byte {} of the header", c as char, self.i);
        }
        Ok(())
    }
    fn string(&mut self) -> Result<String> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => bail!("expected a quoted string at byte {} of the header", self.i),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != quote {
            self.i += 1;
        }
        if self.i == self.s.len() {
            bail!("unterminated string in the header");
        }
        let s = std::str::from_utf8(&self.s[start..self.i])?.to_string();
        self.i += 1;
        Ok(s)
    }
    /// Skips a bracketed list (strings and nesting respected) and returns its text.
    fn list_text(&mut self) -> Result<String> {
        let start = self.i;
        let mut depth = 0usize;
        let mut quote: Option<u8> = None;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            self.i += 1;
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    b'\'' | b'"' => quote = Some(c),
                    b'[' | b'(' => depth += 1,
                    b']' | b')' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned());
                        }
                    }
                    _ => {}
                },
            }
        }
        bail!("unterminated list in the header")
    }
    fn boolean(&mut self) -> Result<bool> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        bail!("expected True or False at byte {} of the header", self.i)
    }
    fn tuple(&mut self) -> Result<Vec<usize>> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                break;
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if start == self.i {
                bail!(
                    "expected a non-negative integer in the shape at byte {}",
                    self.i
                );
            }
            let text = std::str::from_utf8(&self.s[start..self.i])?;
            // Python 2 era files may write `16L`.
            if self.peek() == Some(b'L') {
                self.i += 1;
            }
            dims.push(
                text.parse::<usize>()
                    .with_context(|| format!("shape dimension {text} is too large"))?,
            );
            if dims.len() > 32 {
                bail!("shape has more than 32 dimensions");
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }
}

/// What an `.npy` header declares.
#[derive(Debug, Clone, PartialEq)]
enum Declared {
    /// A float array.
    Float(NpyHeader),
    /// Any other dtype, as written in the header (`'<i8'`, `'|O'`, a record list, ...).
    Other(String),
}

/// Reads the `.npy` preamble + header from `r` (at most `entry_size` bytes in all).
/// Returns what it declares and the number of bytes the header used.
fn read_npy_header(r: &mut impl Read, entry_size: u64) -> Result<(Declared, u64)> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .context("reading the .npy preamble")?;
    if &pre[..6] != b"\x93NUMPY" {
        bail!("not a .npy array (bad magic bytes)");
    }
    let (len_bytes, text_len) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            (2u64, u16::from_le_bytes(b) as usize)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            (4u64, u32::from_le_bytes(b) as usize)
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    let used = 8 + len_bytes + text_len as u64;
    if text_len > MAX_HEADER_BYTES || used > entry_size {
        bail!("declared .npy header length {text_len} is larger than the entry ({entry_size} bytes) or the limit");
    }
    let mut text = vec![0u8; text_len];
    r.read_exact(&mut text).context("reading the .npy header")?;
    let text = std::str::from_utf8(&text).context(".npy header is not UTF-8")?;
    let dict =
        parse_header_dict(text.trim_end()).with_context(|| format!(".npy header {text:?}"))?;
    let descr = match dict.get("descr") {
        Some(Lit::Str(s)) => s.clone(),
        Some(Lit::List(l)) => return Ok((Declared::Other(l.clone()), used)),
        _ => bail!(".npy header has no 'descr'"),
    };
    let fortran_order = match dict.get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        _ => bail!(".npy header has no boolean 'fortran_order'"),
    };
    let shape = match dict.get("shape") {
        Some(Lit::Tuple(t)) => t.clone(),
        _ => bail!(".npy header has no tuple 'shape'"),
    };
    let (big_endian, ty) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let elem = match ty {
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        _ => return Ok((Declared::Other(format!("'{descr}'")), used)),
    };
    Ok((
        Declared::Float(NpyHeader {
            elem,
            big_endian,
            fortran_order,
            shape,
        }),
        used,
    ))
}

/// Converts stored bytes to f32 values, counting those that are not finite as
/// stored (or, for f64, that overflow f32).
fn to_f32(h: &NpyHeader, bytes: &[u8], nf: &mut NonFinite) -> Vec<f32> {
    let n = h.item_size() as usize;
    bytes
        .chunks_exact(n)
        .map(|c| match (h.elem, h.big_endian) {
            (Elem::F16, false) => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            (Elem::F16, true) => half::f16::from_be_bytes([c[0], c[1]]).to_f32(),
            (Elem::F32, false) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            (Elem::F32, true) => f32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            (Elem::F64, big) => {
                let b: [u8; 8] = c.try_into().expect("chunk of 8");
                (if big {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }) as f32
            }
        })
        .inspect(|&v| nf.add(v as f64))
        .collect()
}

/// The arrays of an `.npz` file.
#[derive(Debug, Default)]
pub struct NpzContents {
    /// Float arrays as f32 CPU tensors, keyed by entry name without `.npy`.
    pub arrays: BTreeMap<String, Tensor>,
    /// Entries that are not float arrays: (key, dtype as declared); their data was not read.
    pub skipped: Vec<(String, String)>,
    /// Float arrays holding non-finite values: key -> (counts, stored dtype).
    pub non_finite: BTreeMap<String, (NonFinite, String)>,
}

/// Reads every float array of the `.npz` at `path` as an f32 CPU tensor, keyed by
/// the entry name without its `.npy` suffix; other entries are listed as skipped.
/// Non-finite values are counted, not refused (the caller names the tensors).
pub fn read(path: &Path) -> Result<NpzContents> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a valid .npz (zip) archive", path.display()))?;
    if zip.len() > MAX_ENTRIES {
        bail!(
            "{}: {} entries, more than the limit of {MAX_ENTRIES}",
            path.display(),
            zip.len()
        );
    }
    let mut out = NpzContents::default();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("{}: reading zip entry #{i}", path.display()))?;
        if entry.is_dir() {
            continue;
        }
        let entry_name = entry.name().to_string();
        let ctx = || format!("{}: entry {entry_name}", path.display());
        let Some(key) = entry_name.strip_suffix(".npy") else {
            bail!(
                "{}: not a .npy entry (an .npz holds only .npy arrays)",
                ctx()
            );
        };
        let key = key.to_string();
        let size = checked_size(&entry, file_len, &ctx())?;
        total += size;
        if total > MAX_TOTAL_BYTES {
            bail!(
                "{}: archive holds more than {MAX_TOTAL_BYTES} bytes of arrays",
                path.display()
            );
        }
        let (declared, used) = read_npy_header(&mut entry, size).with_context(ctx)?;
        let header = match declared {
            Declared::Float(h) => h,
            Declared::Other(descr) => {
                if out.arrays.contains_key(&key) || out.skipped.iter().any(|(k, _)| *k == key) {
                    bail!("{}: array {key} appears twice", path.display());
                }
                out.skipped.push((key, descr));
                continue;
            }
        };
        let data = read_data(&mut entry, &header, used, size, &ctx())?;
        let mut nf = NonFinite::default();
        let values = to_f32(&header, &data, &mut nf);
        if !nf.is_clean() {
            let stored = match header.elem {
                Elem::F16 => "float16",
                Elem::F32 => "float32",
                Elem::F64 => "float64",
            };
            out.non_finite.insert(key.clone(), (nf, stored.to_string()));
        }
        drop(data);
        let tensor = to_tensor(&header, values)?;
        if out.skipped.iter().any(|(k, _)| *k == key)
            || out.arrays.insert(key.clone(), tensor).is_some()
        {
            bail!("{}: array {key} appears twice", path.display());
        }
    }
    Ok(out)
}

/// The uncompressed size of `entry`, checked against the file length and the limits
/// before anything is read (a stored entry's sizes must agree; a deflated one may expand
/// at most [`MAX_DEFLATE_RATIO`] times).
fn checked_size(
    entry: &zip::read::ZipFile<'_, std::fs::File>,
    file_len: u64,
    ctx: &str,
) -> Result<u64> {
    let size = entry.size();
    let compressed = entry.compressed_size();
    if compressed > file_len {
        bail!("{ctx}: compressed size {compressed} exceeds the file length {file_len}");
    }
    let ratio_ok = match entry.compression() {
        zip::CompressionMethod::Stored => size == compressed,
        _ => size <= compressed.saturating_mul(MAX_DEFLATE_RATIO).max(1 << 20),
    };
    if !ratio_ok || size > MAX_ENTRY_BYTES {
        bail!("{ctx}: implausible uncompressed size {size} (compressed {compressed}, limit {MAX_ENTRY_BYTES})");
    }
    Ok(size)
}

/// The array data of `entry` after its header (`used` bytes of `size`): exactly what the
/// header declares, read to the end so that the zip reader checks the CRC.
fn read_data(
    entry: &mut impl Read,
    header: &NpyHeader,
    used: u64,
    size: u64,
    ctx: &str,
) -> Result<Vec<u8>> {
    let data_bytes = header
        .data_bytes()
        .with_context(|| format!("{ctx}: shape {:?} overflows", header.shape))?;
    if used.checked_add(data_bytes) != Some(size) {
        bail!(
            "{ctx}: header declares shape {:?} ({data_bytes} bytes of data) but the entry holds {} bytes after its header",
            header.shape,
            size - used
        );
    }
    let mut data = vec![0u8; data_bytes as usize];
    entry
        .read_exact(&mut data)
        .with_context(|| format!("{ctx}: truncated array data"))?;
    // Reading to the end lets the zip reader verify the CRC.
    let mut rest = Vec::new();
    entry
        .read_to_end(&mut rest)
        .with_context(|| format!("{ctx}: corrupted entry (CRC)"))?;
    if !rest.is_empty() {
        bail!("{ctx}: {} bytes after the declared array data", rest.len());
    }
    Ok(data)
}

/// The f32 CPU tensor of an array's `values` in the layout its header declares (a
/// Fortran-order array transposed to C order).
fn to_tensor(header: &NpyHeader, values: Vec<f32>) -> Result<Tensor> {
    Ok(if header.fortran_order && header.shape.len() > 1 {
        let rev: Vec<usize> = header.shape.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..rev.len()).rev().collect();
        Tensor::from_vec(values, rev, &Device::Cpu)?
            .permute(perm)?
            .contiguous()?
    } else {
        Tensor::from_vec(values, header.shape.clone(), &Device::Cpu)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_header_literals() {
        let d =
            parse_header_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (16, 3, 2), }")
                .unwrap();
        assert_eq!(d["descr"], Lit::Str("<f4".into()));
        assert_eq!(d["fortran_order"], Lit::Bool(false));
        assert_eq!(d["shape"], Lit::Tuple(vec![16, 3, 2]));
        let d =
            parse_header_dict("{'descr': '>f2', 'fortran_order': True, 'shape': (5,)}").unwrap();
        assert_eq!(d["shape"], Lit::Tuple(vec![5]));
        let d = parse_header_dict("{'descr': '<f8', 'fortran_order': False, 'shape': ()}").unwrap();
        assert_eq!(d["shape"], Lit::Tuple(vec![]));
    }

    #[test]
    fn rejects_malformed_headers() {
        assert!(parse_header_dict("{'descr': '<f4', 'shape': (3, 'x')}").is_err());
        assert!(parse_header_dict("{'descr': '<f4'").is_err());
        assert!(parse_header_dict("{'shape': (99999999999999999999999,)}").is_err());
    }

    #[test]
    fn overflowing_shape_is_detected() {
        let h = NpyHeader {
            elem: Elem::F32,
            big_endian: false,
            fortran_order: false,
            shape: vec![usize::MAX, 2],
        };
        assert_eq!(h.data_bytes(), None);
    }

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
            if fortran { "True" } else { "False" }
        );
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_orders_endianness_and_float_widths() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        // [[1, 2, 3], [4, 5, 6]] stored column-major: 1 4 2 5 3 6.
        let f: Vec<u8> = [1f32, 4., 2., 5., 3., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let be: Vec<u8> = [1f32, -2.].iter().flat_map(|v| v.to_be_bytes()).collect();
        let h: Vec<u8> = [0.5f32, 3.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let d: Vec<u8> = [0.25f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        for (name, bytes) in [
            ("fortran.npy", npy("<f4", true, "(2, 3)", &f)),
            ("big.npy", npy(">f4", false, "(2,)", &be)),
            ("half.npy", npy("<f2", false, "(2,)", &h)),
            ("scalar.npy", npy("<f8", false, "()", &d)),
        ] {
            zw.start_file(name, opts).unwrap();
            zw.write_all(&bytes).unwrap();
        }
        zw.finish().unwrap();
        let m = read(&path).unwrap().arrays;
        assert_eq!(
            m["fortran"].to_vec2::<f32>().unwrap(),
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
        assert_eq!(m["big"].to_vec1::<f32>().unwrap(), vec![1., -2.]);
        assert_eq!(m["half"].to_vec1::<f32>().unwrap(), vec![0.5, 3.0]);
        assert_eq!(m["scalar"].to_scalar::<f32>().unwrap(), 0.25);
    }
}
