//! The minimum kernel: which Linux release has every nftables feature the dataplane programs,
//! and the start-up check that refuses an older one with an error naming both versions.
//!
//! The floor is set by the concatenated interval sets (`ip saddr . meta l4proto . th dport`
//! with `flags interval`, the pipapo set type): the set type and its netlink attributes
//! (`NFTA_SET_DESC_CONCAT`, `NFTA_SET_ELEM_KEY_END`) came in 5.6, and the `NFT_SET_CONCAT`
//! set flag nftpol sends with them in 5.7, which a 5.6 kernel rejects (EOPNOTSUPP). Everything
//! else is much older: the inet family, verdict maps, `ct state`, `limit`, `log group` (NFLOG),
//! transport-header payloads (`th dport`) and extended ACKs all predate 4.19.
//!
//! The transport works on both sides of 6.10, where the kernel started acknowledging a batch's
//! END message (`netlink`); hack/kernels.sh runs the suites on kernels before and after it.
//!
//! Without the check, an old kernel fails the first transaction with an errno on a set, which
//! says nothing about upgrading the node.

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

/// Where the running kernel's release (`uname -r`) is read: no FFI needed, and it is the same
/// inside a container as on the node.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// A kernel release as `major.minor.patch` (the patch is 0 when the release omits it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest kernel with every feature the dataplane uses (see the module documentation).
pub const MINIMUM: KernelVersion = KernelVersion::new(5, 7, 0);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "Linux {found} ({release}) is too old for nftpol: it needs Linux {required} or later \
         (concatenated interval sets with the NFT_SET_CONCAT flag); upgrade the node's kernel"
    )]
    TooOld {
        release: String,
        found: KernelVersion,
        required: KernelVersion,
    },
    #[error("cannot tell the kernel version from the release {0:?} (expected MAJOR.MINOR...)")]
    Unrecognized(String),
    #[error("reading the kernel release from {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
}

/// Parses a release as `uname -r` prints it: `5.10.0-32-amd64`, `6.12.117+deb13-amd64`,
/// `6.1.176`, `5.15.0-1071-aws`, `6.6.87.2-microsoft-standard-WSL2`, `6.8`.
pub fn parse_release(release: &str) -> Result<KernelVersion, KernelError> {
    let bad = || KernelError::Unrecognized(release.to_string());
    let trimmed = release.trim();
    // The numeric part ends at the first character that is neither a digit nor a dot.
    let end = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let mut parts = trimmed[..end].split('.');
    let mut number = |required: bool| -> Result<u32, KernelError> {
        match parts.next() {
            Some(p) if !p.is_empty() => p.parse().map_err(|_| bad()),
            Some(_) => Err(bad()),
            None if required => Err(bad()),
            None => Ok(0),
        }
    };
    let major = number(true)?;
    let minor = number(true)?;
    let patch = number(false)?;
    Ok(KernelVersion::new(major, minor, patch))
}

/// Checks `release` against [`MINIMUM`].
pub fn check_release(release: &str) -> Result<KernelVersion, KernelError> {
    let found = parse_release(release)?;
    match found.cmp(&MINIMUM) {
        Ordering::Less => Err(KernelError::TooOld {
            release: release.trim().to_string(),
            found,
            required: MINIMUM,
        }),
        _ => Ok(found),
    }
}

/// Checks the running kernel; `nftpol run` and `nftpol daemon` call it before touching the
/// dataplane.
pub fn require_minimum() -> Result<KernelVersion, KernelError> {
    require_minimum_at(Path::new(OSRELEASE))
}

fn require_minimum_at(path: &Path) -> Result<KernelVersion, KernelError> {
    let release = std::fs::read_to_string(path).map_err(|source| KernelError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    check_release(&release)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion::new(major, minor, patch)
    }

    #[test]
    fn parses_the_releases_nodes_run() {
        for (release, want) in [
            ("5.10.0-32-amd64", v(5, 10, 0)),
            ("6.1.0-50-amd64\n", v(6, 1, 0)),
            ("6.12.117+deb13-amd64", v(6, 12, 117)),
            ("5.15.0-1071-aws", v(5, 15, 0)),
            ("6.6.87.2-microsoft-standard-WSL2", v(6, 6, 87)),
            ("6.18.44-fc-v657", v(6, 18, 44)),
            ("4.18.0-553.el8_10.x86_64", v(4, 18, 0)),
            ("6.8", v(6, 8, 0)),
            ("6.10-rc1", v(6, 10, 0)),
        ] {
            assert_eq!(parse_release(release).unwrap(), want, "{release}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_release() {
        for release in [
            "",
            "linux",
            "6",
            "6.",
            ".6",
            "6..1",
            "x6.1",
            "99999999999.1",
        ] {
            assert!(
                matches!(parse_release(release), Err(KernelError::Unrecognized(_))),
                "{release:?}"
            );
        }
    }

    #[test]
    fn versions_order_numerically() {
        assert!(v(5, 10, 0) > v(5, 7, 0));
        assert!(v(5, 7, 0) > v(5, 6, 19));
        assert!(v(6, 1, 0) > v(5, 19, 9));
    }

    #[test]
    fn the_minimum_is_accepted_and_older_kernels_are_refused_by_name() {
        assert_eq!(check_release("5.7.0").unwrap(), v(5, 7, 0));
        assert_eq!(check_release("5.10.0-32-amd64").unwrap(), v(5, 10, 0));
        let err = check_release("5.6.19-300.fc32.x86_64\n").unwrap_err();
        match &err {
            KernelError::TooOld {
                release,
                found,
                required,
            } => {
                assert_eq!(release, "5.6.19-300.fc32.x86_64");
                assert_eq!(*found, v(5, 6, 19));
                assert_eq!(*required, MINIMUM);
            }
            other => panic!("expected TooOld, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("Linux 5.6.19 (5.6.19-300.fc32.x86_64)"),
            "{msg}"
        );
        assert!(msg.contains("Linux 5.7.0 or later"), "{msg}");
    }

    #[test]
    fn reads_the_release_from_a_file() {
        let dir = std::env::temp_dir().join(format!("nftpol-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("osrelease");
        std::fs::write(&path, "4.19.0-27-amd64\n").unwrap();
        let old = require_minimum_at(&path);
        std::fs::write(&path, "6.1.0-50-amd64\n").unwrap();
        let new = require_minimum_at(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(old, Err(KernelError::TooOld { .. })), "{old:?}");
        assert_eq!(new.unwrap(), v(6, 1, 0));
        assert!(matches!(
            require_minimum_at(&dir.join("missing")),
            Err(KernelError::Unreadable { .. })
        ));
    }

    #[test]
    fn the_running_kernel_is_readable() {
        // Whatever it is, it parses (the test suite runs on Linux).
        parse_release(&std::fs::read_to_string(OSRELEASE).unwrap()).unwrap();
    }
}
