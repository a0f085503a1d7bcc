//! The status file: one small JSON document rewritten after every successful apply, which tests
//! and the testbed poll to learn that a ruleset is in force (and which one).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Number of successful applies so far.
    pub generation: u64,
    /// What the applied ruleset was built from (manifest fingerprint or API summary).
    pub fingerprint: String,
    pub applied_at_unix_ms: u128,
}

/// Writes the status file atomically (tmp + rename): `{"generation", "fingerprint",
/// "applied_at_unix_ms"}`, so that a reader never sees half a document.
pub fn write_status(path: &Path, generation: u64, fingerprint: &str) -> anyhow::Result<()> {
    let status = Status {
        generation,
        fingerprint: fingerprint.to_string(),
        applied_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec(&status)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads a status file back.
pub fn read_status(path: &Path) -> anyhow::Result<Status> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(what: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "nftpol-{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("creating a temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn status_round_trips_and_leaves_no_tmp_file() {
        let dir = TempDir::new("status");
        let path = dir.0.join("status.json");
        write_status(&path, 3, "abc").unwrap();
        write_status(&path, 4, "def").unwrap();
        let s = read_status(&path).unwrap();
        assert_eq!((s.generation, s.fingerprint.as_str()), (4, "def"));
        assert!(s.applied_at_unix_ms > 0);
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status.json"]);
    }

    #[test]
    fn status_keys_are_the_documented_ones() {
        let dir = TempDir::new("status-keys");
        let path = dir.0.join("s");
        write_status(&path, 1, "f").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["applied_at_unix_ms", "fingerprint", "generation"]);
    }

    #[test]
    fn status_write_error_names_the_file() {
        let dir = TempDir::new("status-err");
        let path = dir.0.join("missing-dir").join("s");
        let e = write_status(&path, 1, "f").unwrap_err();
        assert!(format!("{e:#}").contains("missing-dir"), "{e:#}");
    }
}
