//! Optimiser (AdamW with decoupled weight decay) and the timm-style cosine
//! learning-rate schedule with linear warm-up and cool-down.
mod adamw;
mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
