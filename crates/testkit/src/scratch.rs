//! Directories a test makes and leaves nothing of: removed when the
//! [`ScratchDir`] is dropped, even when the test fails.
//!
//! ```
//! let dir = portcullis_testkit::scratch::ScratchDir::new("doc-example");
//! std::fs::write(dir.join("a.txt"), "a").unwrap();
//! let path = dir.to_path_buf();
//! drop(dir);
//! assert!(!path.exists());
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh, empty directory `portcullis-<label>-<pid>` in the temp dir,
/// removed with what it holds when dropped. It reads as a [`Path`].
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Makes the directory, emptied first if an earlier run of the same
    /// process id left it.
    pub fn new(label: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("portcullis-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot make {}: {e}", path.display()));
        ScratchDir { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<OsStr> for ScratchDir {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

/// A new [`ScratchDir`] labelled `label` with an audit signing key and its
/// verifier key in it, written by `pg_proxy` (a command for the `pg-proxy`
/// binary) run as `audit keygen --out DIR`. Use it through
/// [`audit_keys!`](crate::audit_keys), which supplies the command.
pub fn with_audit_keys(label: &str, mut pg_proxy: Command) -> ScratchDir {
    let dir = ScratchDir::new(label);
    let out = pg_proxy
        .args(["audit", "keygen", "--out"])
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run pg-proxy audit keygen: {e}"));
    assert!(out.status.success(), "pg-proxy audit keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    for file in ["audit-key.pem", "audit-key.pub"] {
        assert!(dir.join(file).is_file(), "pg-proxy audit keygen wrote no {file}");
    }
    dir
}

/// How many bytes of the file at `path` are in the kernel's page cache,
/// as `fincore` (util-linux; `scripts/install-deps` installs it) counts
/// them: for tests of what a writer leaves cached.
///
/// ```
/// let dir = portcullis_testkit::scratch::ScratchDir::new("doc-cached");
/// let path = dir.join("a.bin");
/// std::fs::write(&path, vec![1u8; 8192]).unwrap();
/// assert!(portcullis_testkit::scratch::cached_bytes(&path) <= 8192);
/// ```
pub fn cached_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("fincore (util-linux; scripts/install-deps installs it): {e}"));
    assert!(out.status.success(), "fincore {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| panic!("fincore said {text:?} of {}", path.display()))
}
