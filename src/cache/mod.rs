//! The content-addressed cache (docs/cache.md): keys, entries, locks, records, gc.
pub mod gc;
pub mod key;
pub mod store;

pub use key::{canonical_json, KeyParts, UpstreamPart, CACHE_FORMAT};
pub use store::{
    Cache, InstanceRecord, KeyLock, Lookup, Manifest, CACHE_DIR_ENV, DEFAULT_CACHE_DIR,
};
