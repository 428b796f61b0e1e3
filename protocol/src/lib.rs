//! `spool-protocol`: the formats Spool's processes agree on.
//!
//! This crate does no I/O. It holds the record batch format (shared by the
//! wire and the on-disk segments, so a batch is never re-encoded between a
//! producer and a consumer), the varint primitives it is built from, and the
//! newtypes for offsets and partitions. `PROTOCOL.md` beside this crate is
//! the byte-by-byte specification.

#![deny(missing_docs)]

pub mod batch;
pub mod fuzzing;
pub mod types;
pub mod varint;

pub use batch::{Batch, BatchBuilder, BatchError, BatchHeader, Record};
pub use types::{Offset, PartitionId};
