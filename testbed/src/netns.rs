//! Network namespaces for kernel tests: an RAII handle over `ip netns add`/`del`, helpers for
//! links (veth pairs, bridges) and sysctls, and running code inside a namespace.
//!
//! Code runs inside a namespace on a dedicated thread that `setns(CLONE_NEWNET)`s into
//! `/var/run/netns/<name>`: the namespace of a thread is per thread, so the caller's thread is
//! never moved, and sockets created there stay in that namespace whichever thread uses them
//! later. Names are unique per process and call (`nftpol-tb-<pid>-<counter>`), so tests may run
//! twice at once on one machine.
//!
//! ```no_run
//! use nftpol_testbed::netns::Netns;
//! let ns = Netns::new()?;
//! ns.ip(&["link", "set", "lo", "up"])?;
//! let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
//! # anyhow::Ok(())
//! ```

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use super::cleanup;

/// Where `ip netns` keeps the bind mounts that name namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The prefix of every namespace the testbed creates.
pub const NAME_PREFIX: &str = "nftpol-tb";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `nftpol-tb-<pid>-<n>` with loopback up.
    pub fn new() -> Result<Self> {
        Self::with_tag("")
    }

    /// Like [`Netns::new`], with a readable tag appended (`nftpol-tb-<pid>-<n>-<tag>`).
    pub fn with_tag(tag: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("{NAME_PREFIX}-{}-{n}", std::process::id());
        if !tag.is_empty() {
            name.push('-');
            name.extend(
                tag.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }),
            );
        }
        // Registered before creation: a signal between the two must still clean it up.
        cleanup::register_netns(&name);
        if let Err(e) = run_ip(&["netns", "add", &name]) {
            cleanup::unregister_netns(&name);
            return Err(e);
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Opens the namespace file: a handle for [`enter`] that keeps the namespace alive.
    pub fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening namespace {}", self.name))
    }

    /// Runs `f` on a new thread inside this namespace and waits for it. A panic in `f` is
    /// propagated to the caller.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> Result<R> {
                enter(&file)?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
        .with_context(|| format!("running in namespace {}", self.name))
    }

    /// Starts `f` on a new thread inside this namespace (for servers that outlive the call).
    /// The thread holds the namespace alive until it ends, even after its name is deleted.
    pub fn spawn<F, R>(&self, f: F) -> Result<JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open()?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                enter(&file).with_context(|| format!("entering namespace {name}"))?;
                Ok(f())
            })
            .context("spawning a thread")
    }

    /// Whether a new TCP connection from inside this namespace to `dst` is established before
    /// `timeout` (a policy drop shows as a timeout).
    pub fn tcp_connects(&self, dst: std::net::SocketAddr, timeout: std::time::Duration) -> bool {
        self.run(move || std::net::TcpStream::connect_timeout(&dst, timeout).is_ok())
            .unwrap_or(false)
    }

    /// `ip -n <name> ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// `ip -n <name> -batch -` with one `ip` command per line (without the leading `ip`):
    /// one process for many link, address and route changes.
    pub fn ip_batch(&self, script: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning ip -batch")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .context("writing to ip -batch")?;
        }
        let out = child.wait_with_output().context("waiting for ip -batch")?;
        if !out.status.success() {
            bail!(
                "ip -n {} -batch failed: {}\nscript:\n{script}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Sets a sysctl of this namespace, e.g. `net.ipv4.ip_forward` = `1`.
    ///
    /// `/proc/sys/net` resolves against the namespace of the thread that opens it, so this writes
    /// from a thread inside the namespace instead of spawning `ip netns exec sysctl`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value.as_bytes()))?
            .with_context(|| format!("setting {key} in namespace {}", self.name))
    }

    /// Reads a sysctl of this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let v = self
            .run(move || std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {key} in namespace {}", self.name))?;
        Ok(v.trim().to_owned())
    }

    /// `ip netns exec <name> <program>`: a command that runs in this namespace. `ip netns exec`
    /// execs the program, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command in this namespace and fails with its stderr unless it succeeds.
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {program} in {}", self.name))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .with_context(|| format!("writing to {program}"))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {} in {} failed: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        cleanup::delete_netns(&self.name);
        cleanup::unregister_netns(&self.name);
    }
}

/// Whether `ip netns list` shows exactly this name (not merely a longer one it prefixes): how
/// tests check that a namespace is gone.
pub fn is_listed(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Moves the calling thread into the network namespace `file` refers to.
pub fn enter(file: &File) -> Result<()> {
    setns(file, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")
}

/// Creates a veth pair `a_name` in `a` and `b_name` in `b`, both up, without touching the root
/// namespace (no name clashes with other test runs).
pub fn add_veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])
}

/// Creates a bridge (STP and multicast snooping off: ports forward at once and IPv6 neighbour
/// discovery is never filtered) and sets it up.
pub fn add_bridge(ns: &Netns, name: &str) -> Result<()> {
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    ns.ip(&["link", "set", name, "up"])
}

/// Runs `ip ARGS...`, failing with its stderr.
pub fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process may create network namespaces (root, `ip` present). Kernel tests call
/// this and skip with a message rather than fail on machines without the privilege.
/// Panics, naming what is missing, unless network namespaces can be made here (root and iproute2)
/// and every tool of `tools` runs. Kernel tests call it first: a test that cannot run must fail,
/// never pass without having checked anything.
pub fn require(tools: &[&str]) {
    assert!(
        available(),
        "this test needs root and iproute2 (network namespaces): run it as root, as hack/test.sh does"
    );
    for tool in tools {
        let runs = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(runs, "this test needs `{tool}` (hack/deps.sh installs it)");
    }
}

pub fn available() -> bool {
    let root = nix::unistd::geteuid().is_root();
    root && Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_isolate_sockets_and_are_deleted_on_drop() {
        if !available() {
            eprintln!("skipped: needs root and iproute2");
            return;
        }
        let a = Netns::with_tag("a").expect("netns a");
        let b = Netns::new().expect("netns b");
        assert_ne!(a.name(), b.name());
        add_veth(&a, "v0", &b, "v1").expect("veth");
        a.ip(&["addr", "add", "198.51.100.1/24", "dev", "v0"])
            .expect("addr a");
        b.ip(&["addr", "add", "198.51.100.2/24", "dev", "v1"])
            .expect("addr b");

        // A listener created in `b` stays in `b`: a connection from `a` over the veth reaches it.
        let listener = b
            .run(|| std::net::TcpListener::bind("198.51.100.2:0"))
            .expect("run in b")
            .expect("bind in b");
        let port = listener.local_addr().expect("local addr").port();
        let connected = a
            .run(move || {
                std::net::TcpStream::connect_timeout(
                    &format!("198.51.100.2:{port}").parse().expect("addr"),
                    std::time::Duration::from_secs(2),
                )
                .is_ok()
            })
            .expect("run in a");
        assert!(connected, "a reaches b over the veth");
        // The caller's namespace does not have that address.
        assert!(std::net::TcpListener::bind("198.51.100.2:0").is_err());

        // A new namespace copies the host's IPv4 settings (devconf_inherit_init_net=0), so b's
        // starting value depends on the host: set it, then check a's write does not reach it.
        b.sysctl("net.ipv4.ip_forward", "0").expect("sysctl");
        a.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
        assert_eq!(a.read_sysctl("net.ipv4.ip_forward").expect("read"), "1");
        assert_eq!(b.read_sysctl("net.ipv4.ip_forward").expect("read"), "0");

        let names = [a.name().to_owned(), b.name().to_owned()];
        assert!(is_listed(&names[0]));
        assert!(live_contains(&names[0]));
        drop(listener);
        drop(a);
        drop(b);
        for name in &names {
            assert!(!is_listed(name), "{name} still listed");
            assert!(!live_contains(name));
        }
    }

    fn live_contains(name: &str) -> bool {
        cleanup::live_namespaces().iter().any(|n| n == name)
    }

    #[test]
    fn panics_inside_a_namespace_propagate_and_the_namespace_is_still_deleted() {
        if !available() {
            eprintln!("skipped: needs root and iproute2");
            return;
        }
        let name = std::sync::Mutex::new(String::new());
        let result = std::panic::catch_unwind(|| {
            let ns = Netns::new().expect("netns");
            *name.lock().expect("lock") = ns.name().to_owned();
            ns.run(|| panic!("boom")).ok();
        });
        assert!(result.is_err());
        let name = name.into_inner().expect("lock");
        assert!(!is_listed(&name));
    }
}
