//! Small files replaced atomically: write a temp file, fsync it, rename it
//! over the old one, fsync the directory. A crash leaves the old contents or
//! the new, never a mix. Used for segment indexes and topic metadata.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::StorageError;

/// Whether [`write_atomic`] waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and its directory: the new contents survive power loss.
    Synced,
    /// No fsync. For files that are checked on load and rebuilt when stale
    /// or torn (segment indexes), where an fsync would only cost time.
    Unsynced,
}

/// Replaces `path` with `bytes` atomically (and durably, if asked).
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), StorageError> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io = |e| StorageError::io(path, e);
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    if durability == Durability::Synced {
        file.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let (Durability::Synced, Some(dir)) = (durability, path.parent()) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a directory's entries (new or renamed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        write_atomic(&path, b"one", Durability::Synced).unwrap();
        write_atomic(&path, b"two", Durability::Unsynced).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["meta"]);
    }
}
