//! The typed modules a model is built from, each holding its tensors and its implementation
//! chosen once when it is built ([`crate::ops::Kernels`]): [`Linear`] and [`LayerNorm`]
//! (timm's `nn.Linear` / `nn.LayerNorm`), the [`PatchEmbed`]ding, the [`Attention`] and
//! [`Mlp`] of a block, and the [`hooks`] through which adapter methods plug their own
//! modules in. They are built from the timm-named [`crate::params::ParamStore`], which
//! stays the boundary for loading, saving, the optimiser and export: a module holds the
//! store's tensors (a trainable one is the `Var`'s tensor, so optimiser updates show), and
//! a missing or misnamed parameter is an error when the model is built, not when it runs.

mod attention;
pub mod hooks;
mod linear;
mod mlp;
mod norm;
mod patch_embed;

pub use attention::{Attention, AttentionHooks};
pub use hooks::{BlockHooks, Hook, Hooks, ModelHooks, Slot};
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::LayerNorm;
pub use patch_embed::PatchEmbed;
