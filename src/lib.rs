//! clonefs: a FUSE copy-on-write filesystem whose volumes share one deduplicated block store.
//! See docs/ARCHITECTURE.md for the layers, the key layout and the invariants.

pub mod cli;
pub mod control;
pub mod daemon;
pub mod db;
pub mod error;
pub mod fs;
pub mod history;
pub mod memory;
pub mod metrics;
pub mod par;
pub mod store;
pub mod sys;
pub mod transfer;
pub mod volume;
