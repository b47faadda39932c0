//! idat-nn, the neural-network wing of idat-pipe: the timm-exact ViT ([`vit`]) and its architecture
//! ([`config`]), the typed modules it is built from ([`modules`]), the adapter methods and
//! the hooks they place ([`adapters`]), the elementary ops with their fused kernels
//! ([`ops`]), initialisers ([`init`]), the named parameter store that is the boundary for
//! loading, saving and the optimiser ([`params`]), the deterministic dropout / drop-path
//! masks ([`masks`]), losses ([`loss`]), AdamW and the cosine schedule ([`optim`]),
//! checkpoint I/O ([`checkpoint`]) and the f32 / bf16 mixed precision switch
//! ([`precision`]).
//!
//! Imports run one way: `vit` -> `adapters` -> `modules` -> `ops` -> (`masks`, `params`,
//! `config`, `precision`). The crate depends on no other crate of the workspace (the
//! domain, `idat-domain`, re-exports it as `idat_domain::nn`); where its checkpoint readers
//! read files, the caller may pass how ([`checkpoint::ReadFile`]), which is how the domain
//! checks the bytes of cache entries against their manifests.

#![warn(missing_docs)]

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
