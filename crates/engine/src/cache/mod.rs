//! The content-addressed cache (docs/cache.md): keys, entries, locks, records, gc.
pub mod external;
pub mod freshness;
pub mod gc;
pub mod key;
pub mod keys;
pub mod move_dir;
pub mod store;
pub mod verified;

pub use external::{hash_external, ExternalHash};
pub use key::{canonical_json, ExternalPart, KeyParts, UpstreamPart, CACHE_FORMAT};
pub use store::{
    Cache, InstanceRecord, KeyLock, Lookup, Manifest, CACHE_DIR_ENV, DEFAULT_CACHE_DIR,
};
