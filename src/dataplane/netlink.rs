//! The netfilter netlink transport: sending one nftnl batch as one atomic transaction and
//! reading back what is programmed.
//!
//! The traps this module exists for (all measured, see DESIGN-NOTES):
//! - nfnetlink commits a batch only when it arrives in one skb: `mnl::Socket::send_all` sends
//!   each 128 KiB page separately and the kernel silently aborts the rest, so all pages go out
//!   in one `sendmsg` with an iovec, after raising SO_SNDBUFFORCE to the batch size.
//! - nftnl sets NLM_F_ACK on every message (4.4x slower at 10k messages, and enough ACKs to
//!   overflow the receive buffer): it is cleared everywhere but on the batch END, whose ACK is
//!   the commit signal. Errors are always reported, ACK flag or not.
//! - nfnetlink processes the whole batch inside `sendmsg`, so every reply is queued when it
//!   returns; a receive timeout only guards against a kernel that never answers.
//! - The kernel only says "seq N: errno"; callers keep a label per seq to name the object.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nftnl::FinalizedBatch;
use nftnl::nftnl_sys::libc;
use nix::errno::Errno;
use nix::sys::socket::{self as socket, MsgFlags, NetlinkAddr, setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::shape::{self, RuleShape};
use super::sys::{self, DumpKind, DumpedObject, NetfilterSocket, RawElem};

const NLMSG_HDRLEN: usize = 16;
/// NLM_F_ACK_TLVS: extended-ACK attributes follow the (capped) nlmsgerr.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
const RECV_BUF: usize = 1 << 20;

/// One error reply of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsgError {
    pub seq: u32,
    pub errno: i32,
    /// Extended ACK detail (kernel message, offending attribute offset), if any.
    pub detail: Option<String>,
}

/// What the kernel answered to a batch.
#[derive(Clone, Debug, Default)]
pub struct BatchReply {
    pub errors: Vec<MsgError>,
    /// The END message was acknowledged: the transaction committed.
    pub end_acked: bool,
    pub bytes: usize,
    pub pages: usize,
}

/// A netfilter netlink socket, bound in the network namespace of the thread that opened it.
/// Not `Sync`: a batch exchange must not interleave with another on the same socket.
pub struct NlSocket {
    sock: NetfilterSocket,
    portid: u32,
    timeout: Duration,
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A parsed netlink header: (len, type, flags, seq, pid).
fn header(b: &[u8], at: usize) -> Option<(usize, u16, u16, u32, u32)> {
    if at + NLMSG_HDRLEN > b.len() {
        return None;
    }
    let len = read_u32(b, at) as usize;
    if len < NLMSG_HDRLEN || at + len > b.len() {
        return None;
    }
    Some((
        len,
        read_u16(b, at + 4),
        read_u16(b, at + 6),
        read_u32(b, at + 8),
        read_u32(b, at + 12),
    ))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Copies the batch pages into one buffer, clearing NLM_F_ACK on every message but the last
/// (the batch END). Returns the buffer and the number of messages.
pub fn flatten_strip_acks(pages: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut flat: Vec<u8> = pages.concat();
    let mut off = 0;
    let mut last = None;
    let mut count = 0;
    while let Some((len, _, flags, _, _)) = header(&flat, off) {
        let cleared = flags & !(libc::NLM_F_ACK as u16);
        flat[off + 6..off + 8].copy_from_slice(&cleared.to_ne_bytes());
        last = Some((off, flags));
        count += 1;
        off += align4(len);
    }
    if let Some((at, original)) = last {
        flat[at + 6..at + 8].copy_from_slice(&original.to_ne_bytes());
    }
    (flat, count)
}

impl NlSocket {
    /// Opens a netfilter socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let sock = NetfilterSocket::open()?;
        let portid = sock.portid();
        // Extended ACKs name the offending attribute; capped ACKs do not echo back whole
        // (up to 64 KiB) element messages with every error.
        sys::set_netlink_flag(&sock, libc::NETLINK_EXT_ACK)?;
        sys::set_netlink_flag(&sock, libc::NETLINK_CAP_ACK)?;
        let s = Self {
            sock,
            portid,
            timeout: Duration::from_secs(5),
        };
        s.set_recv_timeout(s.timeout)?;
        Ok(s)
    }

    fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    fn set_recv_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = TimeVal::new(
            t.as_secs() as libc::time_t,
            t.subsec_micros() as libc::suseconds_t,
        );
        Ok(setsockopt(&self.sock, sockopt::ReceiveTimeout, &tv)?)
    }

    fn recv(&self, buf: &mut [u8], nonblocking: bool) -> io::Result<Option<usize>> {
        let flags = if nonblocking {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        match socket::recv(self.fd(), buf, flags) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::EAGAIN) => Ok(None),
            Err(Errno::EINTR) => self.recv(buf, nonblocking),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops replies left over from an earlier exchange (nftnl restarts seqs at 1).
    fn drain(&self, buf: &mut [u8]) -> io::Result<()> {
        while self.recv(buf, true)?.is_some() {}
        Ok(())
    }

    /// Sends the batch in one `sendmsg` and collects the kernel's verdict.
    pub fn send_batch(&self, batch: &FinalizedBatch) -> io::Result<BatchReply> {
        self.send_batch_with(batch, false)
    }

    /// [`NlSocket::send_batch`]; with `may_exist`, adding an element that already exists is
    /// no error (nftnl always asks for NLM_F_EXCL).
    pub fn send_batch_with(
        &self,
        batch: &FinalizedBatch,
        may_exist: bool,
    ) -> io::Result<BatchReply> {
        let mut buf = vec![0u8; RECV_BUF];
        self.drain(&mut buf)?;
        let pages: Vec<&[u8]> = batch.iter().collect();
        let (mut flat, messages) = flatten_strip_acks(&pages);
        if may_exist {
            clear_flag(&mut flat, libc::NLM_F_EXCL as u16);
        }
        let seqs = batch.sequence_numbers();
        // With kernels that ACK batch END (>= 6.10), nftnl gives BEGIN and END real seqs.
        let end_seq = (seqs.end > seqs.start).then(|| seqs.end - 1);
        let end_flagged =
            header_flags_of_last(&flat).is_some_and(|f| f & libc::NLM_F_ACK as u16 != 0);

        // The socket options are C ints: sizes beyond i32::MAX are capped, as the kernel would.
        let size = i32::try_from(flat.len() + (1 << 16)).unwrap_or(i32::MAX);
        setsockopt(&self.sock, sockopt::SndBufForce, &(size as usize))?;
        // Room for one error reply per message (capped: header + errno + extack).
        let rcv = i32::try_from((messages.max(256)) * 256).unwrap_or(i32::MAX);
        setsockopt(
            &self.sock,
            sockopt::RcvBufForce,
            &(rcv.max(1 << 20) as usize),
        )?;

        // To the kernel (port 0), all pages in one datagram.
        let kernel = NetlinkAddr::new(0, 0);
        let sent = socket::sendmsg(
            self.fd(),
            &[IoSlice::new(&flat)],
            &[],
            MsgFlags::empty(),
            Some(&kernel),
        )?;
        if sent != flat.len() {
            return Err(io::Error::other(format!(
                "short sendmsg: {sent} of {} bytes",
                flat.len()
            )));
        }

        let mut reply = BatchReply {
            bytes: flat.len(),
            pages: pages.len(),
            ..Default::default()
        };
        let mut blocking_waits = 0;
        loop {
            let got = self.recv(&mut buf, true)?;
            let n = match got {
                Some(n) => n,
                None => {
                    // Everything the kernel had to say was queued during sendmsg; wait only
                    // when the commit confirmation we asked for is still missing.
                    if reply.end_acked || !reply.errors.is_empty() || !end_flagged {
                        break;
                    }
                    if blocking_waits > 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no reply to the batch END from the kernel",
                        ));
                    }
                    blocking_waits += 1;
                    match self.recv(&mut buf, false) {
                        Ok(Some(n)) => n,
                        Ok(None) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            self.parse_acks(&buf[..n], end_seq, &mut reply);
        }
        Ok(reply)
    }

    fn parse_acks(&self, b: &[u8], end_seq: Option<u32>, reply: &mut BatchReply) {
        let mut off = 0;
        while let Some((len, ty, flags, seq, pid)) = header(b, off) {
            if ty == libc::NLMSG_ERROR as u16
                && (pid == self.portid || pid == 0)
                && len >= NLMSG_HDRLEN + 4
            {
                let err = read_u32(b, off + NLMSG_HDRLEN) as i32;
                if err == 0 {
                    if Some(seq) == end_seq {
                        reply.end_acked = true;
                    }
                } else {
                    let detail = if flags & NLM_F_ACK_TLVS != 0 {
                        extack(&b[off..off + len], flags)
                    } else {
                        None
                    };
                    reply.errors.push(MsgError {
                        seq,
                        errno: -err,
                        detail,
                    });
                }
            }
            off += align4(len);
        }
    }

    /// Runs one dump request and calls `each` with every reply message.
    fn dump(&self, req: &[u8], seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; RECV_BUF];
        self.drain(&mut buf)?;
        self.sock.send(req)?;
        loop {
            let n = match self.recv(&mut buf, false)? {
                Some(n) => n,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "netlink dump timed out",
                    ));
                }
            };
            let mut off = 0;
            while let Some((len, ty, _, s, pid)) = header(&buf[..n], off) {
                if s == seq && pid == self.portid {
                    match i32::from(ty) {
                        libc::NLMSG_DONE => return Ok(()),
                        libc::NLMSG_ERROR => {
                            let err = read_u32(&buf, off + NLMSG_HDRLEN) as i32;
                            if err != 0 {
                                return Err(io::Error::from_raw_os_error(-err));
                            }
                            return Ok(());
                        }
                        _ => each(&buf[off..off + len]),
                    }
                }
                off += align4(len);
            }
        }
    }

    /// Objects of one kind in `table` of `family`.
    pub fn dump_objects(
        &self,
        kind: DumpKind,
        family: u16,
        table: &CStr,
    ) -> io::Result<Vec<DumpedObject>> {
        let seq = 0x6e66_7000 + kind as u32;
        let mut req = vec![0u8; 4096];
        let filter = (kind != DumpKind::Tables).then_some(table);
        let n = sys::build_dump_request(&mut req, kind, family, filter, seq);
        let mut out = Vec::new();
        let wanted = table.to_string_lossy();
        self.dump(&req[..n], seq, |m| {
            if let Some(o) = sys::parse_dumped(m, kind)
                && o.table == wanted
            {
                out.push(o);
            }
        })?;
        Ok(out)
    }

    /// Every rule of `table` parsed into its chain and expressions, in chain order.
    pub fn dump_rules(&self, family: u16, table: &CStr) -> io::Result<Vec<RuleShape>> {
        let seq = 0x6e66_7200;
        let mut req = vec![0u8; 4096];
        let n = sys::build_dump_request(&mut req, DumpKind::Rules, family, Some(table), seq);
        let mut out = Vec::new();
        self.dump(&req[..n], seq, |m| {
            if let Some(r) = shape::parse_rule(m) {
                out.push(r);
            }
        })?;
        Ok(out)
    }

    /// The counter of every rule of `table` that has one, with its chain and verdict.
    pub fn dump_rule_counters(
        &self,
        family: u16,
        table: &CStr,
    ) -> io::Result<Vec<sys::RuleCounter>> {
        let seq = 0x6e66_7300;
        let mut req = vec![0u8; 4096];
        let n = sys::build_dump_request(&mut req, DumpKind::Rules, family, Some(table), seq);
        let mut out = Vec::new();
        self.dump(&req[..n], seq, |m| {
            if let Some(c) = sys::rule_counter(m) {
                out.push(c);
            }
        })?;
        Ok(out)
    }

    /// The elements of one set.
    pub fn dump_elements(&self, family: u16, table: &CStr, set: &CStr) -> io::Result<Vec<RawElem>> {
        let seq = 0x6e66_7100;
        let mut req = vec![0u8; 4096];
        let n = sys::build_elems_request(&mut req, family, table, set, seq);
        let mut out = Vec::new();
        self.dump(&req[..n], seq, |m| {
            out.extend(sys::parse_elems(m));
        })?;
        Ok(out)
    }

    /// Whether `table` exists in `family`.
    pub fn table_exists(&self, family: u16, table: &CStr) -> io::Result<bool> {
        Ok(self
            .dump_objects(DumpKind::Tables, family, table)?
            .iter()
            .any(|t| t.name == table.to_string_lossy()))
    }
}

/// Clears `flag` on every message of a flattened batch.
fn clear_flag(flat: &mut [u8], flag: u16) {
    let mut off = 0;
    while let Some((len, _, flags, _, _)) = header(flat, off) {
        flat[off + 6..off + 8].copy_from_slice(&(flags & !flag).to_ne_bytes());
        off += align4(len);
    }
}

fn header_flags_of_last(flat: &[u8]) -> Option<u16> {
    let mut off = 0;
    let mut last = None;
    while let Some((len, _, flags, _, _)) = header(flat, off) {
        last = Some(flags);
        off += align4(len);
    }
    last
}

/// Extended ACK attributes after a capped nlmsgerr (errno + the original header).
fn extack(msg: &[u8], flags: u16) -> Option<String> {
    // NLM_F_CAPPED (0x100): only the original header follows the errno.
    let capped = flags & 0x100 != 0;
    let mut a = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
    if !capped {
        let orig_len = read_u32(msg, NLMSG_HDRLEN + 4) as usize;
        a = NLMSG_HDRLEN + 4 + align4(orig_len);
    }
    let mut parts = Vec::new();
    while a + 4 <= msg.len() {
        let alen = read_u16(msg, a) as usize;
        let atype = read_u16(msg, a + 2);
        if alen < 4 || a + alen > msg.len() {
            break;
        }
        let v = &msg[a + 4..a + alen];
        match atype {
            NLMSGERR_ATTR_MSG => parts.push(
                String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string(),
            ),
            NLMSGERR_ATTR_OFFS if v.len() >= 4 => {
                parts.push(format!("bad attribute at offset {}", read_u32(v, 0)))
            }
            _ => {}
        }
        a += align4(alen);
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// errno as text (`No such file or directory`).
pub fn strerror(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// Labels of a batch's messages by sequence number.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    labels: Vec<String>,
}

impl Labels {
    pub fn push(&mut self, label: String) {
        self.labels.push(label);
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Every label, in message order.
    pub fn as_slice(&self) -> &[String] {
        &self.labels
    }

    /// The label of `seq` in a batch whose seqs are `seqs` (BEGIN/END included when the
    /// kernel ACKs them, in which case the first object message is `seqs.start + 1`).
    pub fn resolve(&self, seqs: &std::ops::Range<u32>, seq: u32) -> String {
        let total = (seqs.end - seqs.start) as usize;
        let first = if total == self.labels.len() + 2 {
            seqs.start + 1
        } else {
            seqs.start
        };
        seq.checked_sub(first)
            .and_then(|i| self.labels.get(i as usize))
            .cloned()
            .unwrap_or_else(|| format!("batch control message (seq {seq})"))
    }
}

/// Sorted, deduplicated errno counts, for logs.
pub fn summarize(errors: &[MsgError]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for e in errors {
        *m.entry(e.errno).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(flags: u16, seq: u32) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    #[test]
    fn acks_stripped_except_last() {
        let ack = libc::NLM_F_ACK as u16;
        let a = [msg(ack | 1, 1), msg(ack, 2)].concat();
        let b = msg(ack, 3);
        let (flat, n) = flatten_strip_acks(&[&a, &b]);
        assert_eq!(n, 3);
        assert_eq!(read_u16(&flat, 6), 1);
        assert_eq!(read_u16(&flat, 26), 0);
        assert_eq!(read_u16(&flat, 46), ack);
    }

    #[test]
    fn labels_skip_batch_begin() {
        let mut l = Labels::default();
        l.push("a".into());
        l.push("b".into());
        assert_eq!(l.resolve(&(1..5), 2), "a");
        assert_eq!(l.resolve(&(1..5), 3), "b");
        assert_eq!(l.resolve(&(1..3), 1), "a");
        assert!(l.resolve(&(1..5), 4).contains("control"));
    }
}
