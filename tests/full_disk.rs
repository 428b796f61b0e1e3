//! A full disk: appends fail with a clear error, nothing acknowledged is
//! lost, and appends work again once space is freed. Runs on a small tmpfs
//! the test mounts itself, which needs root; elsewhere it says so and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::read_all;
use spool::{
    Broker, BrokerConfig, BrokerError, Message, PartitionId, StorageError, SyncPolicy, TopicConfig,
};

struct Tmpfs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs {
            mount_point: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

fn is_no_space(err: &BrokerError) -> bool {
    matches!(
        err,
        BrokerError::Storage {
            source: StorageError::NoSpace { .. },
            ..
        }
    )
}

async fn fill_until_full(broker: &Broker, next: &mut u64) -> BrokerError {
    loop {
        let msgs: Vec<_> = (0..8)
            .map(|i| Message::new(format!("{:01000}", *next + i)))
            .collect();
        match broker.produce("t", PartitionId(0), &msgs).await {
            Ok(info) => {
                assert_eq!(info.base_offset.0, *next);
                *next += 8;
            }
            Err(err) => return err,
        }
        assert!(*next < 1_000_000, "the disk never filled up");
    }
}

fn check(broker: &Broker, acked: u64) {
    let records = read_all(broker, "t", 0);
    assert_eq!(records.len() as u64, acked);
    for r in records {
        assert_eq!(r.value, format!("{:01000}", r.offset).into_bytes());
    }
}

#[tokio::test]
async fn full_disk_is_a_clean_error_and_loses_nothing() {
    common::init_tracing();
    let Some(fs) = Tmpfs::mount("8m") else {
        eprintln!("SKIPPED full_disk_is_a_clean_error_and_loses_nothing: cannot mount a tmpfs (needs root)");
        return;
    };
    let data: &Path = &fs.mount_point.join("data");
    let filler = fs.mount_point.join("filler");
    std::fs::write(&filler, vec![1u8; 3 * 1024 * 1024]).unwrap();

    let broker = Broker::open(data, BrokerConfig::default()).unwrap();
    let config = TopicConfig::new(1)
        .sync(SyncPolicy::Always)
        .segment_size_bytes(512 * 1024);
    broker.create_topic("t", config).unwrap();

    let mut acked = 0u64;
    let err = fill_until_full(&broker, &mut acked).await;
    assert!(is_no_space(&err), "expected a no-space error, got: {err}");
    assert!(acked > 1000, "only {acked} messages fit");
    // Still full: still a clean error, still nothing lost.
    let stuck_at = acked;
    let again = fill_until_full(&broker, &mut acked).await;
    assert!(is_no_space(&again), "{again}");
    assert_eq!(
        acked, stuck_at,
        "an append of the same size succeeded on a full disk"
    );
    check(&broker, acked);

    // Free space: appends work again.
    std::fs::remove_file(&filler).unwrap();
    let before = acked;
    let err = fill_until_full(&broker, &mut acked).await;
    assert!(
        acked > before,
        "appends did not resume after space was freed"
    );
    assert!(is_no_space(&err), "{err}");
    check(&broker, acked);
    drop(broker);

    let broker = Broker::open(data, BrokerConfig::default()).unwrap();
    check(&broker, acked);
}
