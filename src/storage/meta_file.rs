//! Small metadata files (topic and group configuration, ack-state
//! snapshots): an 8-byte header, then a bincode body, replaced atomically.
//!
//! The header is 4 magic bytes naming what the file holds and a u32
//! little-endian format version. It is checked before the body is decoded:
//! bincode carries no schema, so a body written by another format version
//! could otherwise decode into wrong values instead of failing. A file of
//! another kind, or of a version this code does not read, is refused with an
//! error that names the file and both versions.

use std::fs;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::atomic_file::{write_atomic, Durability};
use super::StorageError;

const HEADER_LEN: usize = 8;

/// What one kind of metadata file is called and which version this code
/// writes and reads.
#[derive(Clone, Copy, Debug)]
pub struct MetaKind {
    /// The first four bytes of every file of this kind.
    pub magic: [u8; 4],
    /// The format version written, and the only one read.
    pub version: u32,
}

/// Encodes `value` with its header.
pub fn encode<T: Serialize>(kind: MetaKind, value: &T) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&kind.magic);
    bytes.extend_from_slice(&kind.version.to_le_bytes());
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Decodes a file's bytes, checking the header first.
pub fn decode<T: DeserializeOwned>(
    path: &Path,
    kind: MetaKind,
    bytes: &[u8],
) -> Result<T, StorageError> {
    let bad = |reason: String| StorageError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < HEADER_LEN || bytes[..4] != kind.magic {
        let start = &bytes[..bytes.len().min(4)];
        return Err(bad(format!(
            "not a {} file: it starts with {:?}",
            String::from_utf8_lossy(&kind.magic),
            String::from_utf8_lossy(start)
        )));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != kind.version {
        return Err(bad(format!(
            "format version {version} is not supported (this Spool reads version {})",
            kind.version
        )));
    }
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(&bytes[HEADER_LEN..], bincode::config::standard())
            .map_err(|e| bad(format!("body does not decode: {e}")))?;
    if HEADER_LEN + used != bytes.len() {
        return Err(bad(format!(
            "{} bytes after the body",
            bytes.len() - HEADER_LEN - used
        )));
    }
    Ok(value)
}

/// Writes `value` to `path` atomically.
pub fn write<T: Serialize>(
    path: &Path,
    kind: MetaKind,
    value: &T,
    durability: Durability,
) -> Result<(), StorageError> {
    let bytes = encode(kind, value).map_err(|reason| StorageError::Metadata {
        path: path.to_path_buf(),
        reason: format!("cannot encode: {reason}"),
    })?;
    write_atomic(path, &bytes, durability)
}

/// Reads `path`; `None` if it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path, kind: MetaKind) -> Result<Option<T>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => decode(path, kind, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Reads `path`, which must exist.
pub fn read_existing<T: DeserializeOwned>(path: &Path, kind: MetaKind) -> Result<T, StorageError> {
    fs::read(path)
        .map_err(|e| StorageError::io(path, e))
        .and_then(|bytes| decode(path, kind, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: MetaKind = MetaKind {
        magic: *b"TEST",
        version: 2,
    };

    #[test]
    fn round_trips_and_refuses_other_kinds_versions_and_trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        assert_eq!(read::<(u32, String)>(&path, KIND).unwrap(), None);
        write(&path, KIND, &(7u32, "x".to_string()), Durability::Synced).unwrap();
        assert_eq!(
            read::<(u32, String)>(&path, KIND).unwrap(),
            Some((7, "x".to_string()))
        );

        let bytes = fs::read(&path).unwrap();
        let other_version = MetaKind { version: 3, ..KIND };
        let err = decode::<(u32, String)>(&path, other_version, &bytes).unwrap_err();
        assert!(
            err.to_string().contains("version 2 is not supported"),
            "{err}"
        );
        let other_kind = MetaKind {
            magic: *b"ELSE",
            ..KIND
        };
        assert!(decode::<(u32, String)>(&path, other_kind, &bytes).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u32, String)>(&path, KIND, &longer).is_err());
        assert!(decode::<(u32, String)>(&path, KIND, &bytes[..5]).is_err());
    }
}
