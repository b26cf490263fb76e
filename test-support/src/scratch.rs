//! Private scratch directories for tests, removed on drop.

use std::{os::unix::fs::DirBuilderExt as _, path::PathBuf};

/// A private (0700) scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `/tmp/pw-NAME-PID`, emptied first.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Scratch(dir)
    }

    /// Writes `text` to `rel` inside it, making the directories between.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file inside")).unwrap();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
