//! Neural-network building blocks: the timm-exact ViT ([`vit`]), the adapter methods
//! ([`adapters`]), differentiable fused CPU ops ([`ops`]), initialisers ([`init`]), the
//! named parameter store shared by the model and the adapters ([`params`]) and the
//! deterministic dropout / drop-path masks ([`masks`]).
//!
//! Losses, the optimiser and checkpoint I/O live in `loss`, `optim` and `checkpoint`.

pub mod adapters;
pub mod bench;
pub mod init;
pub mod masks;
pub mod ops;
pub mod params;
pub mod vit;
