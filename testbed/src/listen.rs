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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};

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
    fn raw_fd(&self) -> RawFd {
        match self {
            Source::Tcp(l) => l.as_raw_fd(),
            Source::Udp(s) => s.as_raw_fd(),
            Source::SctpRaw { fd, .. } => fd.as_raw_fd(),
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
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start() -> Result<Self> {
        // SAFETY: eventfd has no preconditions; the fd is owned right away.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd");
        }
        // SAFETY: fd is a fresh descriptor we own.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
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
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
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
fn serve(shared: &Shared, wake: &OwnedFd) {
    let mut sources: Vec<Source> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        sources.append(&mut lock(&shared.pending));
        let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
            .chain(sources.iter().map(Source::raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length. A timeout bounds the wait in
        // case a wake-up is lost.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a valid u64 from our nonblocking eventfd.
            unsafe {
                libc::read(
                    wake.as_raw_fd(),
                    (&mut v as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        for (source, pfd) in sources.iter().zip(&fds[1..]) {
            if pfd.revents == 0 {
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
                    // SAFETY: reads into a valid buffer of its length from a nonblocking socket.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if n <= 0 {
                        break;
                    }
                    let packet = &buf[..n as usize];
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
