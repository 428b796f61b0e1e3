//! The authentication fuzz target's entry point: what a hostile client
//! controls in an authentication (the request body, its user name and
//! password of any length and content), and what a damaged users file
//! feeds the verifier (a stored hash string).

use std::sync::OnceLock;

use bytes::Bytes;
use spool_protocol::requests::kind;
use spool_protocol::Request;

use super::Auth;

fn auth() -> Option<&'static Auth> {
    static AUTH: OnceLock<Option<(tempfile_free::Dir, Auth)>> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = tempfile_free::Dir::new()?;
        let auth = Auth::open(dir.path()).ok()?;
        auth.change(super::SecurityChange::new_user("fuzz", "fuzz-password").ok()?)
            .ok()?;
        Some((dir, auth))
    })
    .as_ref()
    .map(|(_, auth)| auth)
}

/// Decodes `data` as an authentication request and runs it; then reads
/// `data` as a stored password hash and verifies against it. Panics only
/// if credentials other than the one user's are accepted (the oracle).
pub fn exercise_authentication(data: &[u8]) {
    if let Ok(Request::Authenticate(r)) =
        Request::decode(kind::AUTHENTICATE, Bytes::copy_from_slice(data))
    {
        if let Some(auth) = auth() {
            let ok = auth.authenticate(None, &r.user, &r.password).is_ok();
            assert!(!ok || (r.user == "fuzz" && r.password == "fuzz-password"));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        super::users::verify_against(text, "fuzz-password");
    }
}

/// A directory under the system's temp directory, removed on drop (the
/// fuzz build has no dev-dependencies).
mod tempfile_free {
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new() -> Option<Dir> {
            let path = std::env::temp_dir().join(format!("spool-fuzz-auth-{}", std::process::id()));
            std::fs::create_dir_all(&path).ok()?;
            Some(Dir(path))
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
