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
