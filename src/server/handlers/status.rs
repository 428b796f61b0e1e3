//! `ServerStatus`: what a server says about itself (`spool status`).

use std::time::Instant;

use spool_protocol::requests::ServerStatusResponse;

use crate::broker::Broker;

/// Bytes available (to this user) and in all on the file system holding
/// `dir`; `None` when the file system cannot say.
pub(crate) fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    Some((
        fs.f_bavail.saturating_mul(fs.f_frsize),
        fs.f_blocks.saturating_mul(fs.f_frsize),
    ))
}

/// The status of a server that started at `started`, serves `broker`, is
/// reached at `listen` and is node `node` of its cluster (0: none). Reads
/// every partition's size and the file system's: on a blocking thread.
pub fn status(broker: &Broker, started: Instant, listen: &str, node: u64) -> ServerStatusResponse {
    let dir = broker.dir();
    // Unknown when the file system cannot say; the rest still answers.
    let (free, total) = disk_space(dir).unwrap_or((0, 0));
    ServerStatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        node,
        uptime_ms: started.elapsed().as_millis() as u64,
        data_dir: dir.display().to_string(),
        listen: listen.to_string(),
        stored_bytes: broker.storage_stats().size_bytes,
        disk_free_bytes: free,
        disk_total_bytes: total,
    }
}
