//! Domain types shared by every Weir crate: identifiers, content digests, the
//! catalogue of built-in operations, the pipeline specification with its
//! validation, and configuration. The only I/O here is reading the pipeline
//! and configuration files.

pub mod config;
pub mod cost;
mod digest;
mod id;
pub mod ops;
pub mod pipeline;
pub mod process;
pub mod signals;
pub mod usage;
pub mod window;

pub use digest::{ArtifactKind, Digest, DigestError};
pub use id::new_id;

/// The version of Weir, recorded in lineage and environment fingerprints.
pub const WEIR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch: the one timestamp unit used in metadata.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
