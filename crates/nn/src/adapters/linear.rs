//! `linear` (linear probing): only the new head is trained; the backbone is frozen.

use super::AdapterMethod;
use crate::config::VitConfig;

/// Trainable scalars besides the head: none.
pub fn count() -> usize {
    0
}

/// The `linear` method (no hyperparameters, no parameters, no hooks).
#[derive(Clone, Copy, Debug)]
pub struct Linear;

impl AdapterMethod for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn count(&self, _: &VitConfig) -> usize {
        count()
    }
}
