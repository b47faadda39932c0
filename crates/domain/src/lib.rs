//! iDAT (inverse Distillation Adapter-Tuning) on VTAB-1K, as stage kinds of the idat-pipe
//! engine.
//!
//! `nn` (ViT, adapters, losses, AdamW, checkpoints: the `idat-nn` crate, re-exported),
//! `data` (VTAB-1K, images, the embedded mini benchmark), `train` (one loop for AT and
//! iDAT), `report` (tables, statistics, plots) and `kinds`, the stage kinds that run them
//! (one file each); `entries` holds the formats of the cache entries they write and read
//! (one module each). Depends on the engine
//! (`idat_engine`) and on `idat_nn`; neither depends on this. Where the domain reads a
//! checkpoint that may be a file of a cache entry, it passes the engine's verified reader
//! to nn's loaders ([`nn::checkpoint::ReadFile`]), so its bytes are checked against the
//! entry's manifest as they are read.

#![warn(missing_docs)]

pub mod data;
pub mod entries;
pub mod kinds;
pub mod report;
pub mod train;

pub use idat_nn as nn;
