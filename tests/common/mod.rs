//! Shared helpers of the runner's end-to-end tests.
#![allow(dead_code)]
pub mod kinds;
