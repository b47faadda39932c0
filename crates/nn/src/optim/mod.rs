//! Optimiser (AdamW with decoupled weight decay) and the timm-style cosine
//! learning-rate schedule with linear warm-up and cool-down, and gradient accumulation
//! over micro-batches.
mod accum;
mod adamw;
mod schedule;

pub use accum::GradAccum;
pub use adamw::{AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
