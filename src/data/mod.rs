//! See docs/architecture.md.

pub mod mini;
