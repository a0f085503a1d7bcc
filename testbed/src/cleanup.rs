//! Process-wide cleanup of what the testbed creates: network namespaces, child processes and
//! temporary folders.
//!
//! RAII handles ([`super::netns::Netns`], [`super::daemon::Daemon`]) clean up on drop, also while
//! unwinding from a panic. A signal does not unwind, so every handle also registers here, and
//! [`install_signal_handler`] makes SIGINT/SIGTERM/SIGHUP delete whatever is still registered
//! before the process exits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Default)]
struct Registry {
    namespaces: BTreeSet<String>,
    children: BTreeSet<i32>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: BTreeSet::new(),
    children: BTreeSet::new(),
    dirs: BTreeSet::new(),
});

/// The registry survives a panic in another thread: cleanup must still work then.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register_netns(name: &str) {
    registry().namespaces.insert(name.to_owned());
}

pub(crate) fn unregister_netns(name: &str) {
    registry().namespaces.remove(name);
}

pub(crate) fn register_child(pid: i32) {
    registry().children.insert(pid);
}

pub(crate) fn unregister_child(pid: i32) {
    registry().children.remove(&pid);
}

pub(crate) fn register_dir(path: &Path) {
    registry().dirs.insert(path.to_owned());
}

pub(crate) fn unregister_dir(path: &Path) {
    registry().dirs.remove(path);
}

/// Names of the namespaces this process created and has not deleted yet.
pub fn live_namespaces() -> Vec<String> {
    registry().namespaces.iter().cloned().collect()
}

/// Kills every registered child, deletes every registered namespace and folder. Children go first:
/// a daemon inside a namespace keeps it alive after its name is gone.
pub fn cleanup_all() {
    let (children, namespaces, dirs) = {
        let mut reg = registry();
        (
            std::mem::take(&mut reg.children),
            std::mem::take(&mut reg.namespaces),
            std::mem::take(&mut reg.dirs),
        )
    };
    for &pid in &children {
        terminate(pid, Duration::from_secs(2));
    }
    for name in namespaces.iter().rev() {
        delete_netns(name);
    }
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child. Only for pids this process spawned.
pub(crate) fn terminate(pid: i32, grace: Duration) {
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            // Reaped, or not ours to wait for (already reaped): done either way.
            Ok(_) | Err(_) => return,
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ip netns del`, ignoring failures: this runs in Drop and in signal cleanup.
pub(crate) fn delete_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The pid in a testbed name (`nftpol-tb-<pid>-...`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(super::netns::NAME_PREFIX)?
        .strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

/// Deletes testbed namespaces and temporary folders whose creating process is gone (it was
/// SIGKILLed, or the machine lost power). Namespaces of live processes are left alone, so this
/// is safe while other testbeds run. Returns what was removed.
pub fn remove_stale() -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let mut removed = Vec::new();
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner_pid(name).is_some_and(|pid| !alive(pid)) {
            delete_netns(name);
            removed.push(format!("netns {name}"));
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !alive(pid)) {
                let _ = std::fs::remove_dir_all(entry.path());
                removed.push(format!("folder {}", entry.path().display()));
            }
        }
    }
    Ok(removed)
}

/// Makes SIGINT, SIGTERM and SIGHUP clean up and exit with 130. Idempotent; later calls are
/// no-ops (a process has one handler).
pub fn install_signal_handler() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = ctrlc::set_handler(|| {
            cleanup_all();
            std::process::exit(130);
        })
        .map_err(|e| anyhow::anyhow!("installing the signal handler: {e}"));
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_are_read_from_testbed_names_only() {
        assert_eq!(owner_pid("nftpol-tb-123-4-node"), Some(123));
        assert_eq!(owner_pid("nftpol-tb-123-4"), Some(123));
        assert_eq!(owner_pid("nftpol-dp-123-4"), None);
        assert_eq!(owner_pid("nftpol-tb-x-4"), None);
    }
}
