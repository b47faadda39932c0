//! Neural-network building blocks: the timm-exact ViT ([`vit`]) and its architecture
//! ([`config`]), the typed modules it is built from ([`modules`]), the adapter methods and
//! the hooks they place ([`adapters`]), the elementary ops with their fused kernels
//! ([`ops`]), initialisers ([`init`]), the named parameter store that is the boundary for
//! loading, saving and the optimiser ([`params`]), the deterministic dropout / drop-path
//! masks ([`masks`]), losses ([`loss`]), AdamW and the cosine schedule ([`optim`]),
//! checkpoint I/O ([`checkpoint`]) and the f32 / bf16 mixed precision switch
//! ([`precision`]).
//!
//! Imports run one way: `vit` -> `adapters` -> `modules` -> `ops` -> (`masks`, `params`,
//! `config`, `precision`); nothing here imports the rest of the crate.

pub mod adapters;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod init;
pub mod loss;
pub mod masks;
pub mod modules;
pub mod ops;
pub mod optim;
pub mod params;
pub mod precision;
pub mod vit;
