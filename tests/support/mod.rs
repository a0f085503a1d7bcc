//! Conveniences for the dataplane tests on top of `nftpol_testbed::netns` (which owns the
//! namespaces' lifecycle and cleanup): panicking wrappers that keep the tests short, `nft` in a
//! namespace, and a normal form of listings for comparing tables built in different orders.

#![allow(dead_code)]

use std::fs::File;
use std::process::Command;

use nftpol_testbed::netns;

/// A throw-away network namespace, deleted on drop (also on panic).
pub struct Netns {
    inner: netns::Netns,
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let inner = netns::Netns::with_tag("dp").expect("creating a network namespace");
        let name = inner.name().to_string();
        Netns { inner, name }
    }

    /// Runs `f` on a thread inside this namespace and returns its result; panics propagate.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.inner.run(f).expect("running in the namespace")
    }

    /// Starts a thread inside this namespace (for servers and long-lived dataplanes).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        self.inner.spawn(f).expect("spawning in the namespace")
    }

    /// `cmd` run inside the namespace; panics when it fails. Returns stdout.
    pub fn exec(&self, cmd: &[&str]) -> String {
        self.inner
            .exec(cmd[0], &cmd[1..], None)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like `exec` but returns (success, stdout+stderr).
    pub fn try_exec(&self, cmd: &[&str]) -> (bool, String) {
        let out = self
            .inner
            .command(cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("spawn ip");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// `nft list table inet nftpol` in this namespace.
    pub fn list_table(&self) -> String {
        self.exec(&["nft", "list", "table", "inet", "nftpol"])
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    netns::enter(&f).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Runs a command in the current namespace; panics when it fails. Returns stdout.
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
