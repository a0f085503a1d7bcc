//! The conntrack table through ctnetlink (NETLINK_NETFILTER, subsystem CTNETLINK): dumping the
//! entries of the calling thread's network namespace and deleting them by their original tuple,
//! many per `sendmsg`. `--strict` uses it to cut connections a policy change no longer allows.
//! (Creating entries is here too, for the tests and the benchmark that fill a table.)
//!
//! Messages are built and parsed with `netlink-packet-netfilter` (its `conntrack` module models
//! the tuples; the zone it does not, see [`CTA_ZONE`]) and travel over a `netlink-sys` socket, as
//! the NFLOG messages of `crate::observe::nflog` do; no libnetfilter_conntrack, no `unsafe`.
//!
//! Why the tuples matter: the kernel looks an entry up by its original tuple and its zone, so a
//! delete carries exactly those. What the ruleset saw, though, is the original source and the
//! *reply* source (the destination after DNAT, e.g. a Service address rewritten to a pod), so
//! [`Entry::judged`] gives those to the verdict; without NAT they equal the original tuple.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTIPART,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, Parseable,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
    Tuple as CtTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::Socket;
use netlink_sys::constants::NETLINK_NETFILTER;
use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::{RcvBufForce, ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike};

/// `CTA_ZONE` (a big-endian u16): netlink-packet-netfilter 0.4 does not model it, so it is
/// written and read here as a raw attribute (`ConntrackAttribute::Other`).
const CTA_ZONE: u16 = 18;

const NLMSG_HDRLEN: usize = 16;

/// A dump sends skbs of up to 32 KiB; a larger buffer never truncates one.
const RECV_BUF: usize = 64 * 1024;
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests per `sendmsg` when deleting or creating: about 80 bytes each, well under a
/// socket's send buffer. Only failures (an entry already gone) and the last request are
/// answered, each answer capped to the request's header (`NETLINK_CAP_ACK`); a whole batch of
/// answers still takes a few hundred KB of receive buffer (the kernel counts each one's
/// allocation), hence [`RCVBUF`].
pub const BATCH: usize = 256;

/// The receive buffer asked for (`SO_RCVBUFFORCE`, which `CAP_NET_ADMIN` allows beyond
/// `net.core.rmem_max`): a batch of failures must fit, or answers are lost (ENOBUFS).
const RCVBUF: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("conntrack netlink: the kernel answered {0}")]
    Kernel(io::Error),
    #[error("conntrack netlink: malformed reply ({0})")]
    Malformed(&'static str),
}

/// One direction's tuple of a conntrack entry (ports are 0 for port-less protocols).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry: what identifies it (original tuple, zone) and its reply tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Option<Tuple>,
    pub zone: Option<u16>,
}

impl Entry {
    /// What the filter hooks saw of the connection's first packet: the original source, and the
    /// destination after DNAT (the reply's source) with its port.
    pub fn judged(&self) -> (IpAddr, IpAddr, u8, u16) {
        match &self.reply {
            Some(r) => (self.orig.src, r.src, self.orig.proto, r.sport),
            None => (
                self.orig.src,
                self.orig.dst,
                self.orig.proto,
                self.orig.dport,
            ),
        }
    }
}

/// One ctnetlink request as the kernel reads it: `nlmsghdr`, `nfgenmsg` (NFNETLINK_V0, res_id
/// 0), attributes.
fn request(
    message: ConntrackMessage,
    family: NetfilterProtoFamily,
    flags: u16,
    seq: u32,
) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        )),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for every family (AF_UNSPEC).
pub fn dump_request(seq: u32) -> Vec<u8> {
    request(
        ConntrackMessage::Get(Vec::new()),
        NetfilterProtoFamily::Unspec,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

fn tuple_nest(t: &Tuple) -> Vec<CtTuple> {
    vec![
        CtTuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        CtTuple::Proto(vec![
            ProtoTuple::Protocol(t.proto.into()),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ]),
    ]
}

/// The kernel parses a tuple's addresses by the message's family.
fn family_of(t: &Tuple) -> NetfilterProtoFamily {
    if t.src.is_ipv6() {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    }
}

/// `IPCTNL_MSG_CT_NEW` creating the entry (its reply tuple is the original one reversed unless
/// given), established for `timeout` seconds when TCP; acknowledged only when `ack`.
pub fn create_request(entry: &Entry, timeout: u32, seq: u32, ack: bool) -> Vec<u8> {
    let t = &entry.orig;
    let reply = entry.reply.unwrap_or(Tuple {
        src: t.dst,
        dst: t.src,
        proto: t.proto,
        sport: t.dport,
        dport: t.sport,
    });
    let mut attributes = vec![
        ConntrackAttribute::CtaTupleOrig(tuple_nest(t)),
        ConntrackAttribute::CtaTupleReply(tuple_nest(&reply)),
        ConntrackAttribute::CtaTimeout(timeout),
    ];
    if t.proto == 6 {
        // TCP_CONNTRACK_ESTABLISHED
        attributes.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
            vec![ProtoInfoTCP::State(3)],
        )]));
    }
    if let Some(zone) = entry.zone {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    let ack = if ack { NLM_F_ACK } else { 0 };
    request(
        ConntrackMessage::New(attributes),
        family_of(t),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | ack,
        seq,
    )
}

/// `IPCTNL_MSG_CT_DELETE` of the entry with this original tuple (and zone), acknowledged.
pub fn delete_request(entry: &Entry, seq: u32) -> Vec<u8> {
    delete_request_with(entry, seq, true)
}

/// [`delete_request`], acknowledged only when `ack` (a failure is always answered).
fn delete_request_with(entry: &Entry, seq: u32, ack: bool) -> Vec<u8> {
    let t = &entry.orig;
    let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(tuple_nest(t))];
    if let Some(zone) = entry.zone {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    let ack = if ack { NLM_F_ACK } else { 0 };
    request(
        ConntrackMessage::Delete(attributes),
        family_of(t),
        NLM_F_REQUEST | ack,
        seq,
    )
}

/// A `CTA_TUPLE_*` nest: addresses, protocol number and ports (0 when the protocol has none).
fn parse_tuple(nest: &[CtTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for part in nest {
        match part {
            CtTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            CtTuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = *n,
                        ProtoTuple::DestinationPort(n) => dport = *n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        sport,
        dport,
    })
}

/// The value of a raw attribute: `DefaultNla` keeps it private, and only gives it back emitted.
fn raw_value(nla: &DefaultNla) -> Vec<u8> {
    let mut buf = vec![0; nla.buffer_len()];
    nla.emit(&mut buf);
    NlaBuffer::new_checked(&buf[..])
        .map(|b| b.value().to_vec())
        .unwrap_or_default()
}

/// The entry in the attributes of one dumped (or delete) message.
pub fn parse_entry(attributes: &[ConntrackAttribute]) -> Option<Entry> {
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = parse_tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = parse_tuple(t),
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                zone = raw_value(nla)
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]));
            }
            _ => {}
        }
    }
    Some(Entry {
        orig: orig?,
        reply,
        zone,
    })
}

/// One netlink message of a reply buffer: its header, and its payload when the crate decodes
/// it (`None` otherwise: the header still says whose answer it is and what kind).
#[derive(Debug)]
pub struct Message {
    pub header: NetlinkHeader,
    pub payload: Option<NetlinkPayload<NetfilterMessage>>,
}

/// The messages of a buffer the kernel sent; a broken length ends it with an error.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Message, ConntrackError>> + '_ {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let Ok(header) = NetlinkBuffer::new_checked(buf).and_then(|b| NetlinkHeader::parse(&b))
        else {
            buf = &[];
            return Some(Err(ConntrackError::Malformed("message length")));
        };
        let len = header.length as usize;
        let payload = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[..len])
            .ok()
            .map(|m| m.payload);
        // Messages in a datagram start at 4-byte boundaries (NLMSG_ALIGN).
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(Ok(Message { header, payload }))
    })
}

/// The conntrack message of a payload, when it is an `IPCTNL_MSG_CT_*` one.
fn conntrack_message(payload: &NetlinkPayload<NetfilterMessage>) -> Option<&ConntrackMessage> {
    match payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ct),
            ..
        }) => Some(ct),
        _ => None,
    }
}

/// The answer of an `NLMSG_ERROR` message: `Ok(())` for an ACK, the errno otherwise.
fn acked(msg: &Message) -> Result<Result<(), io::Error>, ConntrackError> {
    match &msg.payload {
        Some(NetlinkPayload::Error(e)) => Ok(match e.code {
            None => Ok(()),
            Some(_) => Err(e.to_io()),
        }),
        _ => Err(ConntrackError::Malformed("error message")),
    }
}

/// The addresses of the calling thread's network namespace (the node's own addresses), so that
/// connections the node itself opened can be told apart from forwarded ones.
pub fn local_addresses() -> io::Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    for ifa in getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            out.insert(IpAddr::V4(sin.ip()));
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            out.insert(IpAddr::V6(sin6.ip()));
        }
    }
    Ok(out)
}

/// A ctnetlink socket bound in the network namespace of the thread that opened it.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> Result<Self, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // A kernel that never answers must not hang the enforcer.
        let timeout = TimeVal::seconds(RECV_TIMEOUT.as_secs() as i64);
        setsockopt(&sock, ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        sock.set_cap_ack(true)?;
        if setsockopt(&sock, RcvBufForce, &RCVBUF).is_err() {
            // Without CAP_NET_ADMIN: as much as net.core.rmem_max allows.
            sock.set_rx_buf_sz(RCVBUF)?;
        }
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&mut self) -> Result<usize, ConntrackError> {
        Ok(self.sock.recv(&mut &mut self.buf[..], 0)?)
    }

    /// Every entry of the table (entries without a parsable original tuple are skipped).
    pub fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError> {
        let mut out = Vec::new();
        self.dump_each(&mut |e| out.push(e))?;
        Ok(out)
    }

    /// Calls `each` with every entry of the table as the dump arrives (nothing is collected).
    pub fn dump_each(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError> {
        let seq = self.next_seq();
        self.sock.send(&dump_request(seq), 0)?;
        loop {
            let n = self.recv()?;
            if n == 0 {
                return Err(ConntrackError::Malformed("empty read"));
            }
            for msg in messages(&self.buf[..n]) {
                let msg = msg?;
                if msg.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match msg.header.message_type {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        return acked(&msg)?.map_err(ConntrackError::Kernel);
                    }
                    _ => {
                        if let Some(ConntrackMessage::New(attributes)) =
                            msg.payload.as_ref().and_then(conntrack_message)
                            && let Some(e) = parse_entry(attributes)
                        {
                            each(e);
                        }
                    }
                }
                if msg.header.flags & NLM_F_MULTIPART == 0 {
                    // A dump answer is always multipart; anything else ends it.
                    return Ok(());
                }
            }
        }
    }

    /// Deletes the entries, [`BATCH`] per `sendmsg`; returns how many were deleted (the others
    /// were already gone).
    pub fn delete_many(&mut self, entries: &[Entry]) -> Result<u64, ConntrackError> {
        let mut deleted = 0;
        for chunk in entries.chunks(BATCH) {
            let gone = self.exchange(chunk, delete_request_with)?;
            deleted += (chunk.len() - gone) as u64;
        }
        Ok(deleted)
    }

    /// Creates the entries (TCP ones established), [`BATCH`] per `sendmsg`, expiring after
    /// `timeout` seconds; an entry that exists already is an error.
    pub fn create_many(&mut self, entries: &[Entry], timeout: u32) -> Result<(), ConntrackError> {
        for chunk in entries.chunks(BATCH) {
            self.exchange(chunk, |e, seq, last| create_request(e, timeout, seq, last))?;
        }
        Ok(())
    }

    /// Sends one request per entry in a single `sendmsg`, only the last one acknowledged:
    /// netlink handles them in order, so once the last is answered every failure before it
    /// has been too. Returns how many failed with ENOENT; any other failure is an error.
    fn exchange(
        &mut self,
        entries: &[Entry],
        build: impl Fn(&Entry, u32, bool) -> Vec<u8>,
    ) -> Result<usize, ConntrackError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let first_seq = self.seq.wrapping_add(1);
        let mut buf = Vec::with_capacity(entries.len() * 96);
        for (i, e) in entries.iter().enumerate() {
            let seq = self.next_seq();
            buf.extend_from_slice(&build(e, seq, i + 1 == entries.len()));
        }
        let last_seq = self.seq;
        let ours = |seq: u32| seq.wrapping_sub(first_seq) <= last_seq.wrapping_sub(first_seq);
        self.sock.send(&buf, 0)?;
        let mut not_found = 0;
        let mut error = None;
        loop {
            let n = self.recv()?;
            for msg in messages(&self.buf[..n]) {
                let msg = msg?;
                let seq = msg.header.sequence_number;
                if msg.header.message_type != NLMSG_ERROR || !ours(seq) {
                    continue; // a late answer to an earlier request
                }
                match acked(&msg)? {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => not_found += 1,
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
                if seq == last_seq {
                    return match error {
                        Some(e) => Err(ConntrackError::Kernel(e)),
                        None => Ok(not_found),
                    };
                }
            }
        }
    }

    /// Deletes the entry; `Ok(false)` when it was already gone.
    pub fn delete(&mut self, entry: &Entry) -> Result<bool, ConntrackError> {
        let seq = self.next_seq();
        self.sock.send(&delete_request(entry, seq), 0)?;
        loop {
            let n = self.recv()?;
            for msg in messages(&self.buf[..n]) {
                let msg = msg?;
                if msg.header.sequence_number != seq || msg.header.message_type != NLMSG_ERROR {
                    continue;
                }
                return match acked(&msg)? {
                    Ok(()) => Ok(true),
                    Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => Ok(false),
                    Err(e) => Err(ConntrackError::Kernel(e)),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn entry(src: &str, dst: &str) -> Entry {
        Entry {
            orig: Tuple {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto: 6,
                sport: 40000,
                dport: 80,
            },
            reply: None,
            zone: None,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn dump_request_is_a_ctnetlink_dump() {
        let m = dump_request(7);
        assert_eq!(m.len(), 20);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0101);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..], &[0, 0, 0, 0]);
    }

    /// The bytes the hand-written encoder this module had before sent (and the kernel deleted
    /// by): nested attributes flagged NLA_F_NESTED, ports and zone big endian, 4-byte padding.
    #[cfg(target_endian = "little")]
    #[test]
    fn delete_request_bytes_are_what_the_kernel_reads() {
        let mut v4 = entry("10.0.0.1", "10.0.0.2");
        v4.zone = Some(3);
        assert_eq!(
            hex(&delete_request(&v4, 9)),
            "50000000020105000900000000000000020000003400018014000180080001000a000001080002000a00\
             00021c0002800500010006000000060002009c40000006000300005000000600120000030000"
        );
        assert_eq!(
            hex(&delete_request(&entry("fd00::1", "fd00::2"), 9)),
            "600000000201050009000000000000000a0000004c0001802c00018014000300fd00000000000000000000\
             000000000114000400fd0000000000000000000000000000021c0002800500010006000000060002009c\
             4000000600030000500000"
        );
    }

    #[test]
    fn delete_request_round_trips_through_the_parser() {
        for (src, dst) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let mut e = entry(src, dst);
            e.zone = Some(3);
            let m = delete_request(&e, 9);
            assert_eq!(m.len() % 4, 0);
            assert_eq!(
                u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
                m.len()
            );
            assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0102);
            assert_eq!(m[16], if e.orig.src.is_ipv6() { 10 } else { 2 });
            // The kernel's dump uses the same attribute layout: the parser reads it back.
            let msgs: Vec<_> = messages(&m).collect::<Result<_, _>>().unwrap();
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].header.sequence_number, 9);
            let Some(ConntrackMessage::Delete(attributes)) =
                msgs[0].payload.as_ref().and_then(conntrack_message)
            else {
                panic!("not a delete: {:?}", msgs[0]);
            };
            assert_eq!(parse_entry(attributes), Some(e));
        }
    }

    #[test]
    fn nat_is_judged_after_dnat() {
        let mut e = entry("10.0.0.1", "10.96.0.10");
        e.reply = Some(Tuple {
            src: "10.0.0.9".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            proto: 6,
            sport: 8080,
            dport: 40000,
        });
        assert_eq!(
            e.judged(),
            (
                "10.0.0.1".parse().unwrap(),
                "10.0.0.9".parse().unwrap(),
                6,
                8080
            )
        );
        assert_eq!(
            entry("10.0.0.1", "10.0.0.2").judged().1,
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn loopback_is_a_local_address() {
        let local = local_addresses().unwrap();
        assert!(
            local.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{local:?}"
        );
    }

    #[test]
    fn malformed_input_is_refused_not_panicked_on() {
        assert_eq!(parse_entry(&[]), None);
        // An original tuple without its protocol identifies nothing.
        let no_proto = [ConntrackAttribute::CtaTupleOrig(vec![CtTuple::Ip(vec![
            IPTuple::SourceAddress("10.0.0.1".parse().unwrap()),
            IPTuple::DestinationAddress("10.0.0.2".parse().unwrap()),
        ])])];
        assert_eq!(parse_entry(&no_proto), None);
        let mut m = dump_request(1);
        m[0] = 200; // longer than the buffer
        assert!(matches!(
            messages(&m).next(),
            Some(Err(ConntrackError::Malformed(_)))
        ));
        assert!(messages(&m[..10]).next().is_none());
        // An NLMSG_ERROR cut short: its header is read, its answer is refused.
        let mut short = Vec::new();
        short.extend_from_slice(&18u32.to_ne_bytes());
        short.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        short.extend_from_slice(&[0; 10]);
        short.extend_from_slice(&[1, 2, 0, 0]);
        let msg = messages(&short).next().unwrap().unwrap();
        assert_eq!(msg.header.message_type, NLMSG_ERROR);
        assert!(acked(&msg).is_err());
    }
}
