//! Test-only helpers for the dataplane tests: throw-away network namespaces (RAII, removed on
//! drop and on panic), running code inside one on a dedicated thread, and `nft` in a namespace.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("nftpol-dp-{}-{n}", std::process::id());
        // A leftover of a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Panics inside `f` propagate to the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || {
            enter(&path);
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Spawns a thread inside this namespace (for servers and long-lived dataplanes).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// `ip netns exec <ns> <cmd...>`; panics when it fails. Returns stdout.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// Like `exec` but returns (success, stdout+stderr).
    pub fn try_exec(&self, cmd: &[&str]) -> (bool, String) {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        let out = Command::new("ip").args(&args).output().expect("spawn ip");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// `nft list table inet nftpol` in this namespace.
    pub fn list_table(&self) -> String {
        self.exec(&["nft", "list", "table", "inet", "nftpol"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A listing with its top-level blocks and element lists sorted, for comparing tables whose
/// objects were created in different orders (nft prints creation order).
pub fn normalize(listing: &str) -> String {
    let body = listing
        .trim_end()
        .strip_prefix("table inet nftpol {\n")
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(listing);
    let mut blocks: Vec<String> = body
        .split("\n\n")
        .map(|block| {
            // Join wrapped element lines, then sort the elements.
            let joined = block.replace(",\n\t\t\t     ", ", ");
            joined
                .lines()
                .map(|l| {
                    if let Some(rest) = l.trim_start().strip_prefix("elements = { ") {
                        let inner = rest.trim_end_matches(" }");
                        let mut items: Vec<&str> = inner.split(", ").collect();
                        items.sort();
                        format!("\t\telements = {{ {} }}", items.join(", "))
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|b| b.trim().to_string())
        .collect();
    blocks.sort();
    blocks.join("\n\n")
}
