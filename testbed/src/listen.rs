//! Servers in the pod namespaces: TCP listeners that accept, UDP sockets that echo, and raw
//! SCTP sockets that record which INIT chunks arrived.
//!
//! Sockets are created by short-lived threads inside each pod namespace (they stay in that
//! namespace), then handed to one responder thread that serves all of them with `poll(2)`, so
//! a testbed of many pods and ports costs one thread. TCP listeners bind the wildcard `[::]`
//! (dual-stack), which serves every address of the pod; UDP sockets bind each address.
//!
//! SCTP: this kernel has no SCTP sockets, but raw sockets of protocol 132 work. A pod's raw
//! socket receives every SCTP packet delivered to the pod, so one per address family and pod
//! serves all ports: the probe's unique initiate tag tells which INIT arrived.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{MsgFlags, recv};

use super::netns::Netns;
use super::sctp;
use nftpol::policy::model::Protocol;

/// One socket the responder serves.
#[derive(Debug)]
enum Source {
    Tcp(TcpListener),
    Udp(UdpSocket),
    /// A raw SCTP socket; IPv4 raw sockets deliver the IP header, IPv6 ones do not.
    SctpRaw {
        fd: OwnedFd,
        v4: bool,
    },
}

impl Source {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Tcp(l) => l.as_fd(),
            Source::Udp(s) => s.as_fd(),
            Source::SctpRaw { fd, .. } => fd.as_fd(),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Vec<Source>>,
    stop: AtomicBool,
    /// Initiate tags of the SCTP INITs that arrived in any pod.
    sctp_tags: Mutex<HashSet<u32>>,
    sctp_arrived: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking responder must not take the prober down with a poisoned lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The responder thread and its sockets; stopped and closed on drop.
#[derive(Debug)]
pub struct Responder {
    shared: Arc<Shared>,
    /// An eventfd that wakes the thread for new sockets or stop.
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start() -> Result<Self> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .context("eventfd")?;
        let wake = Arc::new(wake);
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            let wake = wake.clone();
            std::thread::Builder::new()
                .name("testbed-responder".into())
                .spawn(move || serve(&shared, &wake))
                .context("spawning the responder")?
        };
        Ok(Self {
            shared,
            wake,
            thread: Some(thread),
        })
    }

    fn kick(&self) {
        // Fails only when the counter would overflow: the thread is woken up already.
        let _ = self.wake.write(1);
    }

    fn add(&self, sources: Vec<Source>) {
        lock(&self.shared.pending).extend(sources);
        self.kick();
    }

    /// Listens on `port`/`protocol` in `ns`, whose addresses are `ips`. TCP accepts on `[::]`;
    /// UDP echoes from one socket per address, so that a reply always leaves from the address
    /// the request went to (a wildcard socket would let routing pick the source, and a reply
    /// from another address of a multi-address pod would not match the probe's conntrack entry).
    /// SCTP needs nothing per port (see [`Responder::watch_sctp`]).
    pub fn listen(&self, ns: &Netns, ips: &[IpAddr], port: u16, protocol: Protocol) -> Result<()> {
        let sources = match protocol {
            Protocol::Tcp => {
                let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                let l = ns
                    .run(move || TcpListener::bind(addr))?
                    .with_context(|| format!("listening on TCP {port} in {}", ns.name()))?;
                l.set_nonblocking(true).context("nonblocking")?;
                vec![Source::Tcp(l)]
            }
            Protocol::Udp => {
                let mut v = Vec::new();
                for &ip in ips {
                    let addr = SocketAddr::new(ip, port);
                    let s = ns
                        .run(move || UdpSocket::bind(addr))?
                        .with_context(|| format!("listening on UDP {addr} in {}", ns.name()))?;
                    s.set_nonblocking(true).context("nonblocking")?;
                    v.push(Source::Udp(s));
                }
                v
            }
            Protocol::Sctp => return Ok(()),
        };
        self.add(sources);
        Ok(())
    }

    /// Records the SCTP INITs that arrive in `ns` (both address families).
    pub fn watch_sctp(&self, ns: &Netns) -> Result<()> {
        let mut sources = Vec::new();
        for v4 in [true, false] {
            let fd = ns
                .run(move || sctp::raw_socket(v4))?
                .with_context(|| format!("raw SCTP socket in {}", ns.name()))?;
            sources.push(Source::SctpRaw { fd, v4 });
        }
        self.add(sources);
        Ok(())
    }

    /// Waits until every tag in `tags` has arrived or `deadline` passes; returns the arrived ones.
    pub fn wait_sctp(&self, tags: &HashSet<u32>, deadline: Instant) -> HashSet<u32> {
        let mut seen = lock(&self.shared.sctp_tags);
        loop {
            let arrived: HashSet<u32> = tags.intersection(&seen).copied().collect();
            let now = Instant::now();
            if arrived.len() == tags.len() || now >= deadline {
                return arrived;
            }
            seen = match self.shared.sctp_arrived.wait_timeout(seen, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Whether the SCTP INIT with this tag arrived.
    pub fn sctp_arrived(&self, tag: u32) -> bool {
        lock(&self.shared.sctp_tags).contains(&tag)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The responder loop: poll every socket, serve what is ready, pick up new sockets on wake.
fn serve(shared: &Shared, wake: &EventFd) {
    let mut sources: Vec<Source> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        sources.append(&mut lock(&shared.pending));
        let mut fds: Vec<PollFd> = std::iter::once(wake.as_fd())
            .chain(sources.iter().map(Source::as_fd))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        // A timeout bounds the wait in case a wake-up is lost.
        match poll(&mut fds, 1000u16) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        // Any event, also an error or a hang-up (unknown bits included), means serve it.
        let ready = |f: &PollFd| f.any().unwrap_or(true);
        if ready(&fds[0]) {
            // Nonblocking: resets the counter, or finds it reset already.
            let _ = wake.read();
        }
        for (source, pfd) in sources.iter().zip(&fds[1..]) {
            if !ready(pfd) {
                continue;
            }
            match source {
                // Accept and close: the handshake already proved the path.
                Source::Tcp(l) => while l.accept().is_ok() {},
                Source::Udp(s) => loop {
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let _ = s.send_to(&buf[..n], from);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                },
                Source::SctpRaw { fd, v4 } => loop {
                    let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(n) if n > 0 => n,
                        _ => break,
                    };
                    let packet = &buf[..n];
                    let sctp = if *v4 {
                        let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
                        packet.get(ihl..).unwrap_or(&[])
                    } else {
                        packet
                    };
                    if let Some(init) = sctp::parse_init(sctp) {
                        lock(&shared.sctp_tags).insert(init.initiate_tag);
                        shared.sctp_arrived.notify_all();
                    }
                },
            }
        }
    }
}
