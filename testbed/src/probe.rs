//! Probes: can a new connection get from one pod to another, on the real kernel?
//!
//! Every pair is probed at once under one deadline, so a full matrix costs about one timeout
//! however many pairs are denied. TCP and UDP probes run on one thread per pair inside the
//! source pod's namespace: TCP is allowed when `connect` completes, UDP when the unique payload
//! comes back from the echo server. SCTP probes are INIT chunks with unique initiate tags sent
//! from the source pod's raw socket; allowed means the destination pod's raw socket saw that
//! tag (see [`super::listen`]).
//!
//! Each UDP and SCTP probe uses a fresh source port from a process-wide counter: a probe must
//! be a *new* flow, never one that matches a conntrack entry left by an earlier probe that a
//! since-changed policy allowed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::listen::Responder;
use super::netns;
use super::sctp;
use nftpol::policy::model::Protocol;

/// Source ports of UDP and SCTP probes cycle through this range, below Linux's default
/// ephemeral range so that they never collide with ports the kernel hands out.
const SRC_PORTS: std::ops::Range<u32> = 20000..32768;

fn next_src_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (SRC_PORTS.start + n % (SRC_PORTS.end - SRC_PORTS.start)) as u16
}

/// A unique, nonzero SCTP initiate tag (unique within the process, varied across processes).
fn next_tag() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id().wrapping_mul(0x9e37_79b9);
    (salt ^ n.wrapping_mul(0x85eb_ca6b)).max(1)
}

/// How one probe gets out of its source pod.
pub struct Source<'a> {
    /// The source pod's namespace file (threads `setns` into it).
    pub netns: &'a File,
    /// The source pod's raw SCTP sockets (IPv4, IPv6).
    pub sctp: &'a (OwnedFd, OwnedFd),
}

/// One probe: from a source (index into the sources) to an address and port.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub src: usize,
    pub dst: IpAddr,
}

/// Runs every probe concurrently and returns, for each, whether a new connection got through
/// before `timeout`.
pub fn run(
    sources: &[Source<'_>],
    responder: &Responder,
    probes: &[Probe],
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Vec<bool>> {
    let deadline = Instant::now() + timeout;
    match protocol {
        Protocol::Tcp | Protocol::Udp => std::thread::scope(|s| {
            let handles: Vec<_> = probes
                .iter()
                .map(|p| {
                    let file = sources[p.src].netns;
                    let dst = SocketAddr::new(p.dst, port);
                    std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn_scoped(s, move || -> Result<bool> {
                            netns::enter(file)?;
                            Ok(match protocol {
                                Protocol::Tcp => probe_tcp(dst, deadline),
                                _ => probe_udp(dst, deadline),
                            })
                        })
                        .context("spawning a probe thread")
                })
                .collect::<Result<_>>()?;
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        }),
        Protocol::Sctp => probe_sctp(sources, responder, probes, port, deadline),
    }
}

fn probe_tcp(dst: SocketAddr, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    !left.is_zero() && TcpStream::connect_timeout(&dst, left).is_ok()
}

fn probe_udp(dst: SocketAddr, deadline: Instant) -> bool {
    let any: IpAddr = if dst.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    // A port of the range may be busy (another probe still holds it): take the next one.
    let Some(sock) = (0..16).find_map(|_| UdpSocket::bind((any, next_src_port())).ok()) else {
        return false;
    };
    let token = format!("nftpol-testbed {} {}", std::process::id(), next_tag());
    let mut buf = [0u8; 128];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || sock.send_to(token.as_bytes(), dst).is_err() {
            return false;
        }
        // Resend now and then: the first datagram may wait on neighbour resolution.
        let resend_at = Instant::now() + Duration::from_millis(250).min(left);
        while let Some(wait) = resend_at.checked_duration_since(Instant::now()) {
            if wait.is_zero() || sock.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from.port() == dst.port() && &buf[..n] == token.as_bytes() => {
                    return true;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    false
}

fn probe_sctp(
    sources: &[Source<'_>],
    responder: &Responder,
    probes: &[Probe],
    port: u16,
    deadline: Instant,
) -> Result<Vec<bool>> {
    let packets: Vec<(u32, Vec<u8>)> = probes
        .iter()
        .map(|_| {
            let init = sctp::Init {
                src_port: next_src_port(),
                dst_port: port,
                initiate_tag: next_tag(),
            };
            (init.initiate_tag, sctp::build_init(init))
        })
        .collect();
    let mut missing: HashMap<u32, usize> = packets
        .iter()
        .enumerate()
        .map(|(i, (tag, _))| (*tag, i))
        .collect();
    loop {
        // Resend what has not arrived: the first packet may wait on neighbour resolution.
        for &i in missing.values() {
            let p = probes[i];
            let (v4, v6) = sources[p.src].sctp;
            let fd = if p.dst.is_ipv4() { v4 } else { v6 };
            sctp::send(fd, p.dst, &packets[i].1)
                .with_context(|| format!("sending an SCTP INIT to {}", p.dst))?;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let tags: HashSet<u32> = missing.keys().copied().collect();
        let round = (now + Duration::from_millis(250)).min(deadline);
        for tag in responder.wait_sctp(&tags, round) {
            missing.remove(&tag);
        }
        if missing.is_empty() {
            break;
        }
    }
    Ok(packets
        .iter()
        .map(|(tag, _)| responder.sctp_arrived(*tag))
        .collect())
}

/// The probed matrix uses `nftpol simulate`'s type and JSON schema: `allowed[from][to]`, every
/// ordered pair, a pod to itself included.
pub use nftpol::cli::simulate::Matrix;

/// One cell of a matrix: whether `from` reached `to`.
pub fn cell(m: &Matrix, from: &str, to: &str) -> Option<bool> {
    m.allowed.get(from)?.get(to).copied()
}

/// A matrix cell that differs from the expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub from: String,
    pub to: String,
    pub got: Option<bool>,
    pub want: bool,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = |v: bool| if v { "allowed" } else { "denied" };
        match self.got {
            Some(got) => write!(
                f,
                "{} -> {}: {} but expected {}",
                self.from,
                self.to,
                word(got),
                word(self.want)
            ),
            None => write!(f, "{} -> {}: not probed", self.from, self.to),
        }
    }
}

/// Off-diagonal cells where `got` differs from `expected` (`expected[from][to]`). The diagonal
/// is skipped as upstream does: a pod reaching itself never leaves its namespace.
pub fn diff_off_diagonal(
    got: &Matrix,
    expected: &BTreeMap<String, BTreeMap<String, bool>>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (from, row) in expected {
        for (to, &want) in row {
            if from == to {
                continue;
            }
            let got = cell(got, from, to);
            if got != Some(want) {
                out.push(Mismatch {
                    from: from.clone(),
                    to: to.clone(),
                    got,
                    want,
                });
            }
        }
    }
    out
}
