//! Neural-network building blocks: the timm-exact ViT ([`vit`]), the adapter methods
//! ([`adapters`]), differentiable fused CPU ops ([`ops`]), initialisers ([`init`]), the
//! named parameter store shared by the model and the adapters ([`params`]), the
//! deterministic dropout / drop-path masks ([`masks`]), losses ([`loss`]), AdamW and the
//! cosine schedule ([`optim`]), checkpoint I/O ([`checkpoint`]) and the f32 / bf16 mixed
//! precision switch ([`precision`]).

pub mod adapters;
pub mod bench;
pub mod checkpoint;
pub mod init;
pub mod loss;
pub mod masks;
pub mod ops;
pub mod optim;
pub mod params;
pub mod precision;
pub mod vit;
