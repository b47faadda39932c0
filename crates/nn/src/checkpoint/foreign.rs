//! The messages for files [`super::load_backbone`] does not read (PyTorch pickles,
//! TorchScript, HDF5, archives, saved error pages, LFS pointers, ...): what the file is,
//! why it is refused, and the command that converts or fetches the real checkpoint.
//! docs/checkpoints.md lists each message.

use std::path::{Path, PathBuf};

use super::sniff::Detected;

/// Python (torch + safetensors) that converts a `torch.save` file to `.safetensors` without
/// running code from it: `weights_only=True` (argparse's `Namespace`, which timm, DeiT and
/// MAE training checkpoints carry as `args`, is allowed as data); a training checkpoint's
/// `state_dict` or `model` entry is taken; non-tensor entries are dropped. Run by
/// scripts/ckpt_fixtures.py on real torch files, which records it in
/// crates/nn/tests/fixtures/ckpt/torch_convert.txt.
pub const TORCH_TO_SAFETENSORS: &str = "import sys, argparse, torch; \
from safetensors.torch import save_file; \
torch.serialization.add_safe_globals([argparse.Namespace]); \
sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); \
sd = sd.get('state_dict', sd.get('model', sd)); \
save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, sys.argv[2])";

/// Python that converts a TorchScript archive to `.safetensors` (its `state_dict`).
/// `torch.jit.load` runs the archive's TorchScript code: only for files one trusts.
pub const TORCHSCRIPT_TO_SAFETENSORS: &str = "import sys, torch; \
from safetensors.torch import save_file; \
sd = torch.jit.load(sys.argv[1], map_location='cpu').state_dict(); \
save_file({k: v.contiguous().clone() for k, v in sd.items()}, sys.argv[2])";

/// `p` for a POSIX shell: as is when it has only safe characters, else single-quoted.
pub fn sh_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-+=:,@%".contains(c));
    if safe {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where a converted copy of `p` goes: beside it, `.safetensors` in place of its
/// extension (`.converted.safetensors` when it already has that one).
pub fn converted_path(p: &Path) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let is_st = p
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let name = if is_st {
        format!("{stem}.converted.safetensors")
    } else {
        format!("{stem}.safetensors")
    };
    p.with_file_name(name)
}

/// The full `python -c` command converting `p` with `snippet`.
pub fn convert_command(p: &Path, snippet: &str) -> String {
    format!(
        "python -c \"{snippet}\" {} {}",
        sh_quote(p),
        sh_quote(&converted_path(p))
    )
}

/// `a` or `an` before `word` (as read aloud: an XML, an xz, a JSON).
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u', 'x', 'X', 'A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}

/// The refusal of a pickle-based PyTorch file: what it is, why, and the conversion.
fn pickle_message(p: &Path, what: &str, script: bool) -> String {
    let out = sh_quote(&converted_path(p));
    let (cmd, tail) = if script {
        (
            convert_command(p, TORCHSCRIPT_TO_SAFETENSORS),
            "torch.jit.load runs the archive's TorchScript code: convert only a file you trust"
                .to_string(),
        )
    } else {
        (
            convert_command(p, TORCH_TO_SAFETENSORS),
            "The command loads with weights_only=True (no code from the file runs) and keeps only \
             tensors; from a training checkpoint (a dict holding the weights next to optimizer \
             state) it takes the `state_dict` or `model` entry: for another key (e.g. DINO's \
             `teacher`) write sd['teacher'] in its place"
                .to_string(),
        )
    };
    format!(
        "{}: {what}: refused, because reading it means unpickling, which can run arbitrary \
         code (this loader never unpickles). Convert it once to .safetensors where torch and \
         safetensors are installed (pip install torch safetensors):\n  {cmd}\nthen pass {out}. \
         {tail}. docs/checkpoints.md, \"PyTorch files\", explains more.",
        p.display()
    )
}

/// Why the file at `p` (of length `len`) is not read, for each `Detected` that is not a
/// readable format; `None` for the readable ones and [`Detected::Unknown`].
pub fn refusal(p: &Path, d: &Detected, len: u64) -> Option<String> {
    let f = p.display();
    Some(match d {
        Detected::Safetensors | Detected::Npz | Detected::ShardIndex | Detected::Unknown { .. } => {
            return None
        }
        Detected::TorchZip { record } => pickle_message(
            p,
            &format!("a PyTorch file written by torch.save (a zip archive holding the pickle `{record}`)"),
            false,
        ),
        Detected::TorchLegacy => pickle_message(
            p,
            "a PyTorch file in torch.save's legacy format (torch < 1.6 or \
             _use_new_zipfile_serialization=False: a pickle stream with torch's magic number)",
            false,
        ),
        Detected::Pickle { protocol } => pickle_message(
            p,
            &format!(
                "a Python pickle stream (protocol {protocol}; not torch.save's format: pickle.dump \
                 or joblib?). If torch.load cannot read it either, unpickle it only if you trust \
                 its source and save its tensors with safetensors"
            ),
            false,
        ),
        Detected::TorchScript { entry } => pickle_message(
            p,
            &format!("a TorchScript archive written by torch.jit.save (entry `{entry}`)"),
            true,
        ),
        Detected::Empty => format!(
            "{f}: empty file (0 bytes), not a checkpoint: an interrupted or failed download? \
             Download it again"
        ),
        Detected::LfsPointer { oid, size } => lfs_message(p, oid.as_deref(), *size, len),
        other => return archive_or_text(p, other),
    })
}

fn lfs_message(p: &Path, oid: Option<&str>, size: Option<u64>, len: u64) -> String {
    let real = match (size, oid) {
        (Some(s), Some(o)) => format!(" ({s} bytes, sha256 {o})"),
        (Some(s), None) => format!(" ({s} bytes)"),
        (None, Some(o)) => format!(" (sha256 {o})"),
        (None, None) => String::new(),
    };
    format!(
        "{}: a Git LFS pointer file ({len} bytes), not the checkpoint: the real file{real} was \
         never fetched (a clone without git-lfs, or a link to the pointer). In the git \
         repository run `git lfs install` then `git lfs pull`, or download the file itself \
         (on the Hugging Face hub: its /resolve/ URL)",
        p.display()
    )
}

/// Messages for archives, other frameworks' formats and text files.
fn archive_or_text(p: &Path, d: &Detected) -> Option<String> {
    let f = p.display();
    let hf = "A Hugging Face repo also holds these weights as `model.safetensors`: pass that";
    Some(match d {
        Detected::KerasZip => format!(
            "{f}: a Keras 3 `.keras` archive: not read. Export the ViT's weights as .safetensors \
             under timm names (docs/checkpoints.md)"
        ),
        Detected::OtherZip { entries, total } => format!(
            "{f}: a zip archive that is neither a NumPy .npz (no .npy entries) nor a PyTorch \
             file; its {total} entr{} include {}. If it holds a checkpoint, extract it (unzip) \
             and pass that file",
            if *total == 1 { "y" } else { "ies" },
            entries.join(", ")
        ),
        Detected::Hdf5 => format!(
            "{f}: an HDF5 file (Keras `.h5` / `.weights.h5`, or `tf_model.h5`): not read. {hf} \
             (or convert with transformers: ViTModel.from_pretrained(folder, \
             from_tf=True).save_pretrained(out)); other Keras weights must be exported as \
             .safetensors under timm names"
        ),
        Detected::FlaxMsgpack => format!(
            "{f}: a Flax msgpack state (`flax_model.msgpack`): not read. {hf} (or convert with \
             transformers: ViTModel.from_pretrained(folder, from_flax=True).save_pretrained(out))"
        ),
        Detected::Npy => format!(
            "{f}: a single NumPy array (.npy), not a checkpoint of named tensors: expected a \
             .npz of a Google ViT (np.savez) or a .safetensors file"
        ),
        Detected::Gguf => {
            format!("{f}: a GGUF file (llama.cpp): not a ViT checkpoint format read here")
        }
        Detected::Compressed(kind) => {
            let how = match *kind {
                "gzip" => "tar xzf (a .tar.gz) or gunzip",
                "xz" => "tar xJf (a .tar.xz) or xz -d",
                "zstd" => "tar --zstd -xf (a .tar.zst) or zstd -d",
                "bzip2" => "tar xjf (a .tar.bz2) or bunzip2",
                _ => "7z x",
            };
            format!(
                "{f}: {} {kind}-compressed file, not a checkpoint: extract it first ({how}) and \
                 pass the checkpoint inside",
                article(kind)
            )
        }
        Detected::Tar => format!(
            "{f}: a tar archive, not a checkpoint: extract it (tar xf) and pass the checkpoint \
             inside"
        ),
        Detected::Html { title } => format!(
            "{f}: an HTML page{}, not a checkpoint: a failed download saved under the \
             checkpoint's name (an error, login or confirmation page). Download the file again \
             from a direct link (on the Hugging Face hub a /resolve/ URL, not /blob/)",
            title
                .as_ref()
                .map(|t| format!(" (title \"{t}\")"))
                .unwrap_or_default()
        ),
        Detected::Text { what, start } => {
            let why = match *what {
                "JSON" => "a config.json or an error response? Pass the weights file (.safetensors) instead",
                "XML" => "a storage server's error response? Download the file again",
                _ => "an error message saved by a failed download? Download the file again",
            };
            format!(
                "{f}: {} {what} file, not a checkpoint ({why}); it starts with: {start}",
                article(what)
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_and_converted_beside_the_file() {
        assert_eq!(sh_quote(Path::new("/w/vit_b.pth")), "/w/vit_b.pth");
        assert_eq!(
            sh_quote(Path::new("my model's.pth")),
            r"'my model'\''s.pth'"
        );
        assert_eq!(
            converted_path(Path::new("/w/vit.pth")),
            Path::new("/w/vit.safetensors")
        );
        assert_eq!(
            converted_path(Path::new("/w/vit.safetensors")),
            Path::new("/w/vit.converted.safetensors")
        );
        // The snippets go inside double quotes: nothing the shell would expand.
        for s in [TORCH_TO_SAFETENSORS, TORCHSCRIPT_TO_SAFETENSORS] {
            assert!(!s.contains(['"', '$', '`', '\\', '!']), "{s}");
        }
    }
}
