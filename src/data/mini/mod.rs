//! Generators for the embedded mini benchmark (written in another branch; placeholder here).
