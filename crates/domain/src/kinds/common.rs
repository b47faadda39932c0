//! Helpers shared by the ML stage kinds: the device, a model architecture parameter and
//! input directories. The formats of the entries they write are in [`crate::entries`].
use crate::nn::vit::VitConfig;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use idat_engine::stages::StageContext;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The device a stage runs on, from `--device` (`cpu`, `cuda`, `cuda:N`).
///
/// # Errors
/// [`check_device`]'s, or the CUDA device does not open.
pub fn device(spec: &str) -> Result<Device> {
    let Some(ordinal) = check_device(spec)? else {
        return Ok(Device::Cpu);
    };
    Device::new_cuda(ordinal).with_context(|| {
        format!("opening CUDA device {ordinal} (is an NVIDIA GPU and driver present?)")
    })
}

/// `--device` read and checked against this build without opening anything: `None` for the
/// CPU, else the CUDA ordinal (`cuda` is 0). What `run` and `exec-stage` check before any
/// stage runs (the binary's registry hook: [`idat_engine::stages::Registry::set_device_check`]).
///
/// # Errors
/// Not `cpu`, `cuda` or `cuda:N`; a CUDA device on a build without CUDA (saying how to get
/// the CUDA binary).
pub fn check_device(spec: &str) -> Result<Option<usize>> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "cpu" {
        return Ok(None);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"))?,
        None => bail!("device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"),
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "device `{spec}` asked for, but this idat-pipe was built without CUDA; \
             build the CUDA binary with scripts/cuda-build.sh (see docs/gpu.md) or use `--device cpu`"
        );
    }
    Ok(Some(ordinal))
}

/// The architecture of a model stage: a timm preset name, or a full config.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Arch {
    /// A timm preset, e.g. `vit_base_patch16_224`.
    Preset(String),
    /// Any size.
    Config(VitConfig),
}

impl Arch {
    /// The config of the preset, or the config given.
    ///
    /// # Errors
    /// An unknown preset name (the error lists the known ones).
    pub fn resolve(&self) -> Result<VitConfig> {
        match self {
            Arch::Preset(name) => VitConfig::preset(name),
            Arch::Config(c) => Ok(c.clone()),
        }
    }
}

/// The input directory of stage `id`, when this instance `needs` it.
pub fn input_dir<'a>(ctx: &'a StageContext, id: &str) -> Result<&'a Path> {
    Ok(ctx.input(id)?.dir.as_path())
}

#[cfg(test)]
mod tests {
    use super::check_device;

    #[test]
    fn check_device_reads_the_spec_and_knows_the_build() {
        assert_eq!(check_device("cpu").unwrap(), None);
        assert_eq!(check_device(" ").unwrap(), None);
        for bad in ["gpu", "cuda:abc", "cuda:-1", "cuda1", "cuda:"] {
            let e = check_device(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("device `{bad}`: expected `cpu`, `cuda` or `cuda:N`")
            );
        }
        let cuda = check_device("cuda:2");
        if cfg!(feature = "cuda") {
            assert_eq!(cuda.unwrap(), Some(2));
        } else {
            let e = cuda.unwrap_err().to_string();
            assert!(
                e.contains("built without CUDA") && e.contains("--device cpu"),
                "{e}"
            );
        }
    }
}
