//! The conntrack table through ctnetlink (NETLINK_NETFILTER, subsystem CTNETLINK): dumping the
//! entries of the calling thread's network namespace and deleting one by its original tuple.
//! `--strict` uses it to cut connections a policy change no longer allows.
//!
//! Messages are built and parsed here as plain bytes (no libnetfilter_conntrack): the format is
//! small and stable (`nlmsghdr`, `nfgenmsg`, then nested attributes), and byte-level code can be
//! unit tested without a kernel. The only `unsafe` is the `setsockopt` giving the socket a
//! receive timeout and `getifaddrs` for [`local_addresses`].
//!
//! Why the tuples matter: the kernel looks an entry up by its original tuple and its zone, so a
//! delete carries exactly those. What the ruleset saw, though, is the original source and the
//! *reply* source (the destination after DNAT, e.g. a Service address rewritten to a pod), so
//! [`Entry::judged`] gives those to the verdict; without NAT they equal the original tuple.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// A dump sends skbs of up to 32 KiB; a larger buffer never truncates one.
const RECV_BUF: usize = 64 * 1024;
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

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

fn push_nlmsghdr(buf: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `finish`
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills in ours
}

fn push_nfgenmsg(buf: &mut Vec<u8>, family: u8) {
    // family, NFNETLINK_V0, res_id (big endian) 0
    buf.extend_from_slice(&[family, 0, 0, 0]);
}

fn finish(buf: &mut [u8]) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

fn pad4(buf: &mut Vec<u8>) {
    buf.resize(buf.len().div_ceil(4) * 4, 0);
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad4(buf);
}

/// Starts a nested attribute; returns where its length goes.
fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for every family (AF_UNSPEC).
pub fn dump_request(seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
    push_nlmsghdr(
        &mut buf,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    push_nfgenmsg(&mut buf, 0);
    finish(&mut buf);
    buf
}

/// `IPCTNL_MSG_CT_DELETE` of the entry with this original tuple (and zone), acknowledged.
pub fn delete_request(entry: &Entry, seq: u32) -> Vec<u8> {
    let t = &entry.orig;
    let v6 = t.src.is_ipv6();
    let mut buf = Vec::with_capacity(128);
    push_nlmsghdr(
        &mut buf,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    );
    // The kernel parses the tuple's addresses by this family.
    push_nfgenmsg(&mut buf, family_of(&t.src));
    let orig = nest_start(&mut buf, CTA_TUPLE_ORIG);
    let ip = nest_start(&mut buf, CTA_TUPLE_IP);
    let (src, dst) = if v6 {
        (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    } else {
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    };
    push_attr(&mut buf, src, &ip_bytes(&t.src));
    push_attr(&mut buf, dst, &ip_bytes(&t.dst));
    nest_end(&mut buf, ip);
    let proto = nest_start(&mut buf, CTA_TUPLE_PROTO);
    push_attr(&mut buf, CTA_PROTO_NUM, &[t.proto]);
    push_attr(&mut buf, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
    push_attr(&mut buf, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    nest_end(&mut buf, proto);
    nest_end(&mut buf, orig);
    if let Some(zone) = entry.zone {
        push_attr(&mut buf, CTA_ZONE, &zone.to_be_bytes());
    }
    finish(&mut buf);
    buf
}

/// The attributes of a buffer: `(type without flags, payload)`; stops at a malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let next = len.div_ceil(4) * 4;
        buf = buf.get(next..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

fn be16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

fn ip_attr(p: &[u8]) -> Option<IpAddr> {
    match p.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(p).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(p).ok()?).into()),
        _ => None,
    }
}

/// A `CTA_TUPLE_*` nest: addresses, protocol number and ports (0 when the protocol has none).
fn parse_tuple(nest: &[u8]) -> Option<Tuple> {
    let ip = find(nest, CTA_TUPLE_IP)?;
    let (src, dst) = match (find(ip, CTA_IP_V4_SRC), find(ip, CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (ip_attr(s)?, ip_attr(d)?),
        _ => (
            ip_attr(find(ip, CTA_IP_V6_SRC)?)?,
            ip_attr(find(ip, CTA_IP_V6_DST)?)?,
        ),
    };
    let proto = find(nest, CTA_TUPLE_PROTO)?;
    Some(Tuple {
        src,
        dst,
        proto: *find(proto, CTA_PROTO_NUM)?.first()?,
        sport: find(proto, CTA_PROTO_SRC_PORT).and_then(be16).unwrap_or(0),
        dport: find(proto, CTA_PROTO_DST_PORT).and_then(be16).unwrap_or(0),
    })
}

/// The entry in the attributes of one dumped message (after `nfgenmsg`).
pub fn parse_entry(attributes: &[u8]) -> Option<Entry> {
    Some(Entry {
        orig: parse_tuple(find(attributes, CTA_TUPLE_ORIG)?)?,
        reply: find(attributes, CTA_TUPLE_REPLY).and_then(parse_tuple),
        zone: find(attributes, CTA_ZONE).and_then(be16),
    })
}

/// One netlink message of a reply buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of a buffer the kernel sent.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, ConntrackError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let len = word(0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(ConntrackError::Malformed("message length")));
        }
        let msg = Message {
            msg_type: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: word(8),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        let next = len.div_ceil(4) * 4;
        buf = buf.get(next..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 is an ACK).
fn error_code(payload: &[u8]) -> Result<i32, ConntrackError> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(ConntrackError::Malformed("error message"))?;
    Ok(-i32::from_ne_bytes(b))
}

/// The addresses of the calling thread's network namespace (the node's own addresses), so that
/// connections the node itself opened can be told apart from forwarded ones.
pub fn local_addresses() -> io::Result<std::collections::HashSet<IpAddr>> {
    let mut out = std::collections::HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free exactly once below; each
    // `ifa_addr` is null or points to a sockaddr of the size its family implies.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*addr.cast::<libc::sockaddr_in>();
                        out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                        out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// A ctnetlink socket bound in the network namespace of the thread that opened it.
pub struct Conntrack {
    sock: mnl::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> Result<Self, ConntrackError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: passes a pointer to a live timeval and its size to a socket we own.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error().into());
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

    /// Every entry of the table (entries without a parsable original tuple are skipped).
    pub fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError> {
        let seq = self.next_seq();
        self.sock.send(&dump_request(seq))?;
        let mut out = Vec::new();
        loop {
            let n = self.sock.recv_raw(&mut self.buf)?;
            if n == 0 {
                return Err(ConntrackError::Malformed("empty read"));
            }
            for msg in messages(&self.buf[..n]) {
                let msg = msg?;
                if msg.seq != seq {
                    continue; // a late answer to an earlier request
                }
                match msg.msg_type {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match error_code(msg.payload)? {
                        0 => return Ok(out),
                        e => return Err(ConntrackError::Kernel(io::Error::from_raw_os_error(e))),
                    },
                    t if t == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                        if let Some(e) = msg.payload.get(NFGENMSG_LEN..).and_then(parse_entry) {
                            out.push(e);
                        }
                    }
                    _ => {}
                }
                if msg.flags & NLM_F_MULTI == 0 && msg.msg_type != NLMSG_ERROR {
                    // A dump answer is always multipart; anything else ends it.
                    return Ok(out);
                }
            }
        }
    }

    /// Deletes the entry; `Ok(false)` when it was already gone.
    pub fn delete(&mut self, entry: &Entry) -> Result<bool, ConntrackError> {
        let seq = self.next_seq();
        self.sock.send(&delete_request(entry, seq))?;
        loop {
            let n = self.sock.recv_raw(&mut self.buf)?;
            for msg in messages(&self.buf[..n]) {
                let msg = msg?;
                if msg.seq != seq || msg.msg_type != NLMSG_ERROR {
                    continue;
                }
                return match error_code(msg.payload)? {
                    0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    e => Err(ConntrackError::Kernel(io::Error::from_raw_os_error(e))),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(m[16], family_of(&e.orig.src));
            // The kernel's dump uses the same attribute layout: the parser reads it back.
            assert_eq!(parse_entry(&m[20..]), Some(e));
            let msgs: Vec<_> = messages(&m).collect::<Result<_, _>>().unwrap();
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].seq, 9);
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
        assert_eq!(parse_entry(&[8, 0, 1, 0, 1, 2]), None);
        assert_eq!(parse_entry(&[0xff, 0xff, 1, 0]), None);
        let mut m = dump_request(1);
        m[0] = 200; // longer than the buffer
        assert!(matches!(
            messages(&m).next(),
            Some(Err(ConntrackError::Malformed(_)))
        ));
        assert!(messages(&m[..10]).next().is_none());
        assert!(error_code(&[1, 2]).is_err());
    }
}
