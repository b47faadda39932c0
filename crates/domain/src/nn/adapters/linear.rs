//! `linear` (linear probing): only the new head is trained; the backbone is frozen.

/// Trainable scalars besides the head: none.
pub fn count() -> usize {
    0
}
