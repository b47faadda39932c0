//! Warnings at run start where placement will not do what its flags or `resources.gpu_mem`
//! suggest: packing off because a card's memory is unknown, or `--gpu-mem` / `--per-gpu`
//! given where no instance can use them. Each is said once per run, not per instance.
use super::{gib, CardSet};

/// What the run's instances ask of the GPUs, for [`warnings`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// Instances with `resources.gpus` above 0.
    pub gpu_instances: usize,
    /// Of those, the ones that state `resources.gpu_mem`.
    pub with_gpu_mem: usize,
}

/// The run's placement warnings, one line each: `cards` as the executor holds them (`None`:
/// `--device cpu` without `--gpus`, no card counted), `demand` the instances', and the
/// `--gpu-mem` / `--per-gpu` flags as given.
pub fn warnings(
    cards: Option<&CardSet>,
    demand: Demand,
    gpu_mem: Option<u64>,
    per_gpu: Option<usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    let flags: Vec<String> = [
        gpu_mem.map(|m| format!("--gpu-mem ({})", gib(m))),
        per_gpu.map(|n| format!("--per-gpu {n}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let Some(set) = cards else {
        if !flags.is_empty() {
            out.push(format!(
                "{} ignored: under --device cpu without --gpus no card is counted, so \
                 instances are not placed on cards (use --device cuda, or --gpus N to bound GPU \
                 instances by N cards)",
                flags.join(" and ")
            ));
        }
        return out;
    };
    if demand.gpu_instances == 0 && !flags.is_empty() {
        out.push(format!(
            "{} ignored: no stage of this pipeline declares resources.gpus",
            flags.join(" and ")
        ));
        return out;
    }
    if gpu_mem.is_some() && demand.with_gpu_mem == 0 && per_gpu.is_none() {
        out.push(
            "--gpu-mem ignored: no stage states resources.gpu_mem, so every GPU instance takes \
             a card alone (state it, e.g. --set stages.ID.resources.gpu_mem=8G, to pack them)"
                .into(),
        );
    }
    let unknown: Vec<String> = set
        .cards
        .iter()
        .filter(|c| c.total.is_none())
        .map(|c| c.label())
        .collect();
    if demand.with_gpu_mem > 0 && set.per_gpu.is_none() && !unknown.is_empty() {
        out.push(format!(
            "{} instance(s) state resources.gpu_mem, but the memory of {} is unknown (no NVML \
             lists it and no --gpu-mem is given): each takes a card alone; give --gpu-mem SIZE \
             (what each card offers, e.g. 80G) to pack them",
            demand.with_gpu_mem,
            unknown.join(", ")
        ));
    }
    out
}
