//! `spool-protocol`: the formats Spool's processes agree on.
//!
//! This crate does no I/O besides the tokio-util codec and the frame writer. It holds the record
//! batch format (shared by the wire and the on-disk segments, so a batch is
//! never re-encoded between a producer and a consumer), the frame envelope and
//! its codec, typed requests and responses, the wire error codes, and the
//! newtypes for offsets and partitions. `PROTOCOL.md` beside this crate is
//! the byte-by-byte specification.

#![deny(missing_docs)]

pub mod batch;
pub mod codec;
pub mod error_code;
pub mod frame;
pub mod frame_writer;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod requests;
/// The byte-by-byte specification (`PROTOCOL.md`).
pub mod spec {
    #![doc = include_str!("../PROTOCOL.md")]
}
pub mod types;
pub mod varint;

pub use batch::{Batch, BatchBuilder, BatchError, BatchHeader, Record, RecordParts};
pub use codec::{DecodeError, Wire};
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameCodec, FrameError, FrameHead};
pub use frame_writer::FrameWriter;
pub use requests::{
    Call, ErrorResponse, Request, Response, WireGroupMode, WireResetTarget, WireSettle, WireSync,
};
pub use types::{partition_for_key, Offset, PartitionId};
