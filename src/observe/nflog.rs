//! Reading the packets the kernel logs to an NFLOG group (`log ... group N` in nftables), so the
//! daemon can report which connections its rules dropped or allowed without scraping the kernel
//! log.
//!
//! This module owns one `NETLINK_NETFILTER` socket bound to one group ([`NflogSocket`]) and the
//! parsing of what arrives on it: the netlink and nfnetlink_log framing is left to
//! `netlink-packet-netfilter`, the IP and transport headers of the logged payload to `etherparse`
//! ([`parse_ip_packet`]). Only the first [`COPY_RANGE`] bytes of each packet are copied out of
//! the kernel: the addresses and ports are all we report, and a small copy keeps a burst of drops
//! from overrunning the socket.
//!
//! A group has at most one reader per network namespace; binding a group another socket holds
//! fails with [`NflogError::AlreadyBound`] rather than silently stealing or sharing it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::Socket;
use netlink_sys::constants::NETLINK_NETFILTER;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::MsgFlags;

/// Bytes of each logged packet the kernel copies to us, from the network header on: an IPv6
/// header (40), a few extension headers and the first bytes of the transport header (the ports)
/// fit; the rest of the packet is of no use to a log line.
pub const COPY_RANGE: u32 = 128;

/// How long the kernel may hold logged packets to batch them: short, so a log line follows its
/// drop promptly.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(10);

/// Send each packet at once instead of waiting for a batch (the timeout above is the fallback).
const QUEUE_THRESHOLD: u32 = 1;

/// Far above what the kernel puts in one datagram (its batch buffer defaults to NLMSG_GOODSIZE,
/// at most 8 KiB, and with the threshold of 1 a batch is one packet): none is ever truncated.
const RECV_BUF: usize = 64 * 1024;

/// Transports whose header starts with the source and destination port: TCP, UDP, SCTP.
const PORT_FIRST: [u8; 3] = [6, 17, 132];

/// One packet the kernel logged to our group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedPacket {
    /// The rule's `log prefix`, empty when it has none.
    pub prefix: String,
    pub packet: PacketInfo,
}

/// The addresses, protocol and ports of a logged packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number of the transport (after any IPv6 extension headers).
    pub protocol: u8,
    /// `None` for protocols without ports (ICMP) and for fragments without a transport header.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// Why binding or reading an NFLOG group failed.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    /// Another socket (usually another process: a second daemon, `ulogd`) reads this group in
    /// this network namespace; the kernel allows one reader per group.
    #[error("NFLOG group {group} is already bound by another socket in this network namespace")]
    AlreadyBound { group: u16 },
    /// The kernel refused a configuration request (e.g. EPERM without CAP_NET_ADMIN).
    #[error("NFLOG group {group}: the kernel refused {request}: {source}")]
    Kernel {
        group: u16,
        request: &'static str,
        source: io::Error,
    },
    /// A system call on the socket failed.
    #[error("NFLOG socket: {context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> NflogError {
    move |source| NflogError::Io { context, source }
}

/// A socket bound to one NFLOG group of the network namespace it was opened in.
pub struct NflogSocket {
    socket: Socket,
    group: u16,
    buf: Vec<u8>,
    /// Packets that arrived while [`NflogSocket::bind`] waited for the kernel's ACK.
    pending: Vec<LoggedPacket>,
    seq: u32,
    overruns: u64,
    unparsed: u64,
}

impl std::fmt::Debug for NflogSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NflogSocket")
            .field("fd", &self.socket.as_raw_fd())
            .field("group", &self.group)
            .field("overruns", &self.overruns)
            .field("unparsed", &self.unparsed)
            .finish()
    }
}

impl NflogSocket {
    /// Opens a `NETLINK_NETFILTER` socket in the calling thread's network namespace and binds
    /// `group`: whole packets up to [`COPY_RANGE`] bytes, flushed after 10 ms or at once.
    ///
    /// No `PF_BIND` is sent: `log group N` rules reach nfnetlink_log whatever the namespace's
    /// default logger is, and `PF_BIND` would make nfnetlink_log that default
    /// (`net.netfilter.nf_log.<pf>`), redirecting other subsystems' log lines (e.g. conntrack's
    /// invalid packets) from the kernel log to group 0.
    ///
    /// The kernel answers a bind of a group another socket holds with EPERM (EBUSY only when this
    /// very socket holds it); both become [`NflogError::AlreadyBound`] when we have
    /// CAP_NET_ADMIN, so that EPERM cannot mean a missing privilege.
    pub fn bind(group: u16) -> Result<Self, NflogError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io_err("socket"))?;
        socket.bind_auto().map_err(io_err("bind"))?;
        let mut this = NflogSocket {
            socket,
            group,
            buf: vec![0; RECV_BUF],
            pending: Vec::new(),
            seq: 0,
            overruns: 0,
            unparsed: 0,
        };
        let request = vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new_packet(COPY_RANGE).into(),
            Timeout::from(FLUSH_TIMEOUT).into(),
            ConfigNla::QThresh(QUEUE_THRESHOLD),
        ];
        match this.configure("bind", request) {
            // nfnetlink_log checks the group's owner before the command itself.
            Err(NflogError::Kernel { source, .. })
                if source.raw_os_error() == Some(Errno::EBUSY as i32)
                    || (source.raw_os_error() == Some(Errno::EPERM as i32)
                        && has_cap_net_admin()) =>
            {
                Err(NflogError::AlreadyBound { group })
            }
            Err(e) => Err(e),
            Ok(()) => Ok(this),
        }
    }

    /// Blocks until the kernel sends something or `timeout` passes (then `Ok` of an empty vec),
    /// and returns the packets of that datagram. Packets whose payload can't be parsed are
    /// skipped and counted in [`NflogSocket::unparsed`]; when the kernel had to drop log
    /// messages because we read too slowly, [`NflogSocket::overruns`] grows and the result is
    /// empty: a reader must keep reading, not fail.
    pub fn recv(&mut self, timeout: Duration) -> Result<Vec<LoggedPacket>, NflogError> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let Some(len) = self.recv_datagram(timeout)? else {
            return Ok(Vec::new());
        };
        let mut packets = Vec::new();
        for message in split_messages(&self.buf[..len]) {
            match message {
                Ok(message) => {
                    if let Some(nlas) = packet_nlas(&message) {
                        match logged_packet(nlas) {
                            Some(p) => packets.push(p),
                            None => self.unparsed += 1,
                        }
                    }
                }
                Err(()) => self.unparsed += 1,
            }
        }
        Ok(packets)
    }

    /// How many times the kernel dropped log messages for this socket (ENOBUFS) since it was
    /// bound; each time may stand for any number of packets.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// How many logged packets were skipped because their payload (or the netlink message
    /// around it) could not be parsed.
    pub fn unparsed(&self) -> u64 {
        self.unparsed
    }

    /// The group this socket is bound to.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Sends one config request for our group and waits for the kernel's ACK.
    fn configure(&mut self, request: &'static str, nlas: Vec<ConfigNla>) -> Result<(), NflogError> {
        let group = self.group;
        self.seq = self.seq.wrapping_add(1);
        let mut message = config_request(NetfilterProtoFamily::Unspec, group, nlas);
        message.header.sequence_number = self.seq;
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(io_err("sending a config request"))?;

        // The ACK is the kernel's immediate answer; a generous bound only guards against a
        // kernel that never answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(NflogError::Kernel {
                    group,
                    request,
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            let Some(len) = self.recv_datagram(left)? else {
                continue;
            };
            let mut acked = None;
            for message in split_messages(&self.buf[..len]) {
                let Ok(message) = message else {
                    self.unparsed += 1;
                    continue;
                };
                if let Some(nlas) = packet_nlas(&message) {
                    match logged_packet(nlas) {
                        Some(p) => self.pending.push(p),
                        None => self.unparsed += 1,
                    }
                    continue;
                }
                if message.header.sequence_number != self.seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = &message.payload {
                    acked = Some(match e.code {
                        None => Ok(()),
                        Some(_) => Err(NflogError::Kernel {
                            group,
                            request,
                            source: e.to_io(),
                        }),
                    });
                }
            }
            if let Some(result) = acked {
                return result;
            }
        }
    }

    /// Waits up to `timeout` for a datagram and reads it into `self.buf`. `None` when nothing
    /// came, or when the kernel reported an overrun (counted).
    fn recv_datagram(&mut self, timeout: Duration) -> Result<Option<usize>, NflogError> {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        // Rounded up so that a sub-millisecond timeout still waits instead of only peeking.
        let ms = timeout.as_micros().div_ceil(1000);
        let ms = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let ready = match poll(&mut fds, ms) {
            Ok(n) => n,
            Err(Errno::EINTR) => return Ok(None),
            Err(e) => {
                return Err(NflogError::Io {
                    context: "poll",
                    source: e.into(),
                });
            }
        };
        if ready == 0 {
            return Ok(None);
        }
        // MSG_DONTWAIT: poll said readable, but a spurious wakeup must not block past `timeout`.
        match self
            .socket
            .recv(&mut &mut self.buf[..], MsgFlags::MSG_DONTWAIT.bits())
        {
            Ok(len) => Ok(Some(len.min(self.buf.len()))),
            Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                self.overruns += 1;
                Ok(None)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(NflogError::Io {
                context: "recv",
                source: e,
            }),
        }
    }
}

/// Whether this thread holds CAP_NET_ADMIN, the capability nfnetlink demands of every config
/// request: with it, an EPERM to a bind can only mean another socket owns the group.
fn has_cap_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/thread-self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The netlink messages of one datagram; `Err` for one that does not decode (its length
/// header still tells where the next one starts, when that header is sane).
fn split_messages(
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<NetfilterMessage>, ()>> + '_ {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let Ok(header) = NetlinkBuffer::new_checked(bytes) else {
            // A broken length leaves no way to find the next message.
            bytes = &[];
            return Some(Err(()));
        };
        // Messages in a datagram start at 4-byte boundaries (NLMSG_ALIGN).
        let len = header.length() as usize;
        let message =
            NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[..len]).map_err(|_| ());
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(message)
    })
}

/// The attributes of an NFULNL_MSG_PACKET message.
fn packet_nlas(message: &NetlinkMessage<NetfilterMessage>) -> Option<&[PacketNla]> {
    match &message.payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) => Some(nlas),
        _ => None,
    }
}

fn logged_packet(nlas: &[PacketNla]) -> Option<LoggedPacket> {
    let mut prefix = String::new();
    let mut packet = None;
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => prefix = p.to_string_lossy().into_owned(),
            PacketNla::Payload(payload) => packet = parse_ip_packet(payload),
            _ => {}
        }
    }
    Some(LoggedPacket {
        prefix,
        packet: packet?,
    })
}

/// Parses an IP packet (v4 or v6, decided by the version nibble) as NFLOG copies it (starting at
/// the network header, possibly cut short after [`COPY_RANGE`] bytes). `None` when the IP header
/// (with its extension headers) is not all there.
pub fn parse_ip_packet(payload: &[u8]) -> Option<PacketInfo> {
    let sliced = LaxSlicedPacket::from_ip(payload).ok()?;
    let (src, dst, ip_payload) = match sliced.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => (
            IpAddr::from(v4.header().source_addr()),
            IpAddr::from(v4.header().destination_addr()),
            v4.payload(),
        ),
        LaxNetSlice::Ipv6(v6) => (
            IpAddr::from(v6.header().source_addr()),
            IpAddr::from(v6.header().destination_addr()),
            v6.payload(),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    // A header cut off by the copy range (or corrupt) before the transport hides the protocol.
    if let Some((_, layer)) = &sliced.stop_err {
        use etherparse::err::Layer::*;
        if matches!(
            layer,
            IpHeader
                | Ipv4Header
                | Ipv4Packet
                | IpAuthHeader
                | Ipv6Header
                | Ipv6Packet
                | Ipv6ExtHeader
                | Ipv6HopByHopHeader
                | Ipv6DestOptionsHeader
                | Ipv6RouteHeader
                | Ipv6FragHeader
        ) {
            return None;
        }
    }
    let protocol = ip_payload.ip_number.0;
    let ports = match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => Some((tcp.source_port(), tcp.destination_port())),
        Some(TransportSlice::Udp(udp)) => Some((udp.source_port(), udp.destination_port())),
        // SCTP has no parser in etherparse, and a TCP header whose options the copy range cut
        // off fails etherparse's; both start with the two ports, as UDP does. Fragments are left
        // portless like etherparse leaves them: only the first one has a transport header.
        _ if PORT_FIRST.contains(&protocol) && !ip_payload.fragmented => match ip_payload.payload {
            [s0, s1, d0, d1, ..] => Some((
                u16::from_be_bytes([*s0, *s1]),
                u16::from_be_bytes([*d0, *d1]),
            )),
            _ => None,
        },
        _ => None,
    };
    Some(PacketInfo {
        src,
        dst,
        protocol,
        src_port: ports.map(|p| p.0),
        dst_port: ports.map(|p| p.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        IpHeaders, IpNumber, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader, PacketBuilder,
    };
    use std::ffi::CString;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const V6_SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const V6_DST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    fn info(src: IpAddr, dst: IpAddr, protocol: u8, ports: Option<(u16, u16)>) -> PacketInfo {
        PacketInfo {
            src,
            dst,
            protocol,
            src_port: ports.map(|p| p.0),
            dst_port: ports.map(|p| p.1),
        }
    }

    fn ipv4_tcp() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1000)
            .syn()
            .write(&mut out, &[])
            .expect("build");
        out
    }

    #[test]
    fn ipv4_tcp_gives_addresses_and_ports() {
        assert_eq!(
            parse_ip_packet(&ipv4_tcp()),
            Some(info(
                v4([10, 0, 0, 1]),
                v4([10, 0, 0, 2]),
                6,
                Some((40000, 80))
            ))
        );
    }

    #[test]
    fn ipv4_udp_gives_addresses_and_ports() {
        let mut out = Vec::new();
        PacketBuilder::ipv4([192, 0, 2, 1], [198, 51, 100, 7], 64)
            .udp(5353, 53)
            .write(&mut out, b"query")
            .expect("build");
        assert_eq!(
            parse_ip_packet(&out),
            Some(info(
                v4([192, 0, 2, 1]),
                v4([198, 51, 100, 7]),
                17,
                Some((5353, 53))
            ))
        );
    }

    #[test]
    fn ipv4_sctp_ports_come_from_the_common_header() {
        #[rustfmt::skip]
        let packet = [
            // IPv4: version 4, IHL 5, total length 32, TTL 64, protocol 132 (checksum unchecked)
            0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00,
            0x40, 0x84, 0x00, 0x00, 10, 1, 0, 1, 10, 1, 0, 2,
            // SCTP common header: ports 2905 -> 36412, verification tag, checksum
            0x0b, 0x59, 0x8e, 0x3c, 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        assert_eq!(
            parse_ip_packet(&packet),
            Some(info(
                v4([10, 1, 0, 1]),
                v4([10, 1, 0, 2]),
                132,
                Some((2905, 36412))
            ))
        );
        // Without the two ports SCTP has none to report, but the packet still has addresses.
        assert_eq!(
            parse_ip_packet(&packet[..22]),
            Some(info(v4([10, 1, 0, 1]), v4([10, 1, 0, 2]), 132, None))
        );
    }

    #[test]
    fn ipv6_tcp_cut_at_the_copy_range_still_parses() {
        let mut out = Vec::new();
        PacketBuilder::ipv6(V6_SRC.octets(), V6_DST.octets(), 64)
            .tcp(51000, 443, 7, 1000)
            .write(&mut out, &[0xab; 1000])
            .expect("build");
        let want = Some(info(V6_SRC.into(), V6_DST.into(), 6, Some((51000, 443))));
        assert_eq!(parse_ip_packet(&out), want);
        assert_eq!(parse_ip_packet(&out[..COPY_RANGE as usize]), want);
    }

    #[test]
    fn ipv6_hop_by_hop_then_udp_reports_the_transport() {
        // Pad1 options filling the 6 bytes after next-header and length.
        let hop_by_hop =
            Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[1, 4, 0, 0, 0, 0]).expect("ext");
        let header = Ipv6Header {
            hop_limit: 1,
            source: V6_SRC.octets(),
            destination: V6_DST.octets(),
            ..Default::default()
        };
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(hop_by_hop),
            ..Default::default()
        };
        let mut out = Vec::new();
        PacketBuilder::ip(IpHeaders::Ipv6(header, exts))
            .udp(546, 547)
            .write(&mut out, b"dhcp")
            .expect("build");
        assert_eq!(out[6], 0, "the IPv6 header announces hop-by-hop options");
        assert_eq!(
            parse_ip_packet(&out),
            Some(info(V6_SRC.into(), V6_DST.into(), 17, Some((546, 547))))
        );
        // Cut inside the extension header: the transport is unknown, so nothing is reported.
        assert_eq!(parse_ip_packet(&out[..44]), None);
    }

    #[test]
    fn truncated_or_foreign_input_is_none() {
        let packet = ipv4_tcp();
        assert_eq!(parse_ip_packet(&[]), None);
        assert_eq!(parse_ip_packet(&packet[..19]), None);
        assert_eq!(parse_ip_packet(&[0x60; 39]), None);
        // Version nibble 5.
        let mut bad = packet.clone();
        bad[0] = 0x55;
        assert_eq!(parse_ip_packet(&bad), None);
    }

    #[test]
    fn icmp_has_no_ports() {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, b"ping")
            .expect("build");
        assert_eq!(
            parse_ip_packet(&out),
            Some(info(v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), 1, None))
        );
        let mut out = Vec::new();
        PacketBuilder::ipv6(V6_SRC.octets(), V6_DST.octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut out, b"ping")
            .expect("build");
        assert_eq!(
            parse_ip_packet(&out),
            Some(info(V6_SRC.into(), V6_DST.into(), 58, None))
        );
    }

    #[test]
    fn a_logged_packet_needs_a_parsable_payload_and_takes_the_prefix() {
        let prefix = PacketNla::Prefix(CString::new("nftpol drop ingress").expect("cstring"));
        let got = logged_packet(&[prefix.clone(), PacketNla::Payload(ipv4_tcp())]);
        assert_eq!(
            got,
            Some(LoggedPacket {
                prefix: "nftpol drop ingress".into(),
                packet: info(v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), 6, Some((40000, 80))),
            })
        );
        assert_eq!(logged_packet(std::slice::from_ref(&prefix)), None);
        assert_eq!(
            logged_packet(&[prefix, PacketNla::Payload(vec![0x45])]),
            None
        );
    }
}
