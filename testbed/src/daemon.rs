//! The real `nftpol run` daemon, started inside the node namespace, and waiting until it has
//! enforced a given set of manifests (its status file reports their fingerprint).
//!
//! The child is killed on drop, on a signal (through [`super::cleanup`]), and by the kernel if
//! this process dies first (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;

use super::cleanup;
use super::netns::Netns;

/// Environment variable naming the `nftpol` binary to run.
pub const BIN_ENV: &str = "NFTPOL_BIN";

/// Finds the `nftpol` binary: `$NFTPOL_BIN`, else next to the running executable (or one
/// folder up, where cargo puts binaries relative to test executables in `deps/`).
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("nftpol");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "cannot find the nftpol binary next to {}; build it (cargo build [--release] --bins) or set {BIN_ENV}",
        exe.display()
    )
}

/// `GET path` on `127.0.0.1:port` inside `ns` (where a daemon serves `/metrics`, `/livez` and
/// `/readyz`): the status code and the body.
pub fn http_get(ns: &Netns, port: u16, path: &str) -> Result<(u16, String)> {
    ns.run(|| http_get_here(port, path))?
        .with_context(|| format!("GET 127.0.0.1:{port}{path} in {}", ns.name()))
}
/// A one-shot HTTP/1.1 GET on the loopback of the calling thread's namespace.
fn http_get_here(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        bail!("no HTTP header in {raw:?}");
    };
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// What the daemon writes to its status file after every successful apply.
#[derive(Debug, serde::Deserialize)]
pub struct Status {
    pub generation: u64,
    pub fingerprint: String,
}

/// A running `nftpol run`.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    status_file: PathBuf,
    log_file: PathBuf,
}

impl Daemon {
    /// Starts `bin run --manifests DIR --node NODE --status-file STATUS [EXTRA...]` inside `ns`,
    /// with its stdout and stderr going to `log`.
    pub fn start(
        ns: &Netns,
        bin: &Path,
        manifests: &Path,
        node: &str,
        status_file: &Path,
        log: &Path,
        extra_args: &[String],
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("cloning the log file")?;
        let mut cmd = ns.command(bin);
        cmd.arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--node")
            .arg(node)
            .arg("--status-file")
            .arg(status_file)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure only calls prctl, which is async-signal-safe and allocates
        // nothing. PDEATHSIG fires when the spawning *thread* ends, so keep the Daemon on a
        // thread that lives as long as the testbed (tests do).
        unsafe {
            cmd.pre_exec(|| Ok(set_pdeathsig(Signal::SIGTERM)?));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in {}", bin.display(), ns.name()))?;
        cleanup::register_child(child.id() as i32);
        Ok(Self {
            child,
            status_file: status_file.to_owned(),
            log_file: log.to_owned(),
        })
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The status file's content, if it exists and parses.
    pub fn status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Polls the status file until it reports `fingerprint`, the daemon exits, or `timeout`
    /// passes.
    pub fn wait_for_fingerprint(&mut self, fingerprint: &str, timeout: Duration) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(status) = self.status()
                && status.fingerprint == fingerprint
            {
                return Ok(status);
            }
            if let Some(code) = self.child.try_wait().context("checking the daemon")? {
                bail!(
                    "nftpol run exited ({code}) before enforcing fingerprint {fingerprint}; its log:\n{}",
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                let seen = self
                    .status()
                    .map(|s| format!("generation {} fingerprint {}", s.generation, s.fingerprint))
                    .unwrap_or_else(|| "no status".into());
                bail!(
                    "nftpol run did not enforce fingerprint {fingerprint} within {timeout:?} (last: {seen}); its log:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            cleanup::terminate(pid, Duration::from_secs(3));
        } else {
            let _ = self.child.wait();
        }
        cleanup::unregister_child(pid);
    }
}
