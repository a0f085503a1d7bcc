//! What nftnl 0.9's safe API cannot express, written against `nftnl::nftnl_sys`: the only
//! module of the dataplane with `unsafe` code (`conntrack` aside, which owns its socket).
//!
//! - loads into chosen 32-bit registers (a concatenation `ip saddr . meta l4proto . th dport`
//!   needs its fields in consecutive registers; the safe `Payload`/`Meta` always use reg 1),
//! - `lookup` with a destination register (verdict maps),
//! - set attributes: interval/concat/map flags, concat field lengths, verdict data type,
//! - raw set elements with `key_end` (pipapo ranges), interval-end flags (rbtree) and verdicts,
//! - request builders and parsers for netlink dumps (read-back for drift detection),
//! - the netlink socket's raw parts: moving it between threads, borrowing its descriptor for
//!   `nix`, and the two netlink socket options `nix` does not know (extended and capped ACKs).
//!
//! Everything exported is safe to call: a parser takes a byte slice and checks that it holds
//! the whole message before libnftnl sees a pointer to it.

use std::ffi::{CStr, CString, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::{Set, SetKey};
use nftnl::{Rule, Table};

/// 128-bit register 1; also 32-bit register 0 of a concatenation.
pub const REG1: u32 = libc::NFT_REG_1 as u32;
pub const REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;

/// 32-bit register `n` (NFT_REG32_00 + n): concatenation fields are 4-byte aligned. One that
/// starts a 128-bit register is named as that register, as nft does and the kernel dumps it.
pub const fn reg32(n: u32) -> u32 {
    if n.is_multiple_of(4) {
        libc::NFT_REG_1 as u32 + n / 4
    } else {
        libc::NFT_REG32_00 as u32 + n
    }
}

/// `NFT_SET_CONCAT` (kernel 5.6): not in the libc crate.
pub const NFT_SET_CONCAT: u32 = 0x80;
pub const NFT_SET_INTERVAL: u32 = libc::NFT_SET_INTERVAL as u32;
pub const NFT_SET_MAP: u32 = libc::NFT_SET_MAP as u32;
/// `NFT_SET_TIMEOUT`: elements carry their own timeout (`flags timeout`).
pub const NFT_SET_TIMEOUT: u32 = 0x10;
pub const ELEM_INTERVAL_END: u32 = libc::NFT_SET_ELEM_INTERVAL_END as u32;

/// nft's datatype ids (`enum datatypes` in nftables), which `nft list` uses to print keys.
pub mod dtype {
    pub const IPADDR: u32 = 7;
    pub const IP6ADDR: u32 = 8;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    const TYPE_BITS: u32 = 6;

    /// The key type of a concatenation, as nft computes it.
    pub const fn concat(types: &[u32]) -> u32 {
        let mut t = 0;
        let mut i = 0;
        while i < types.len() {
            t = (t << TYPE_BITS) | types[i];
            i += 1;
        }
        t
    }
}

/// Marker key type: [`new_set`] overrides the type and length the safe API would write.
pub struct RawKey;

impl SetKey for RawKey {
    const TYPE: u32 = 0;
    const LEN: u32 = 0;
    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}

/// The attributes of a named set that the safe API does not expose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub key_type: u32,
    pub key_len: u32,
    pub flags: u32,
    /// Unpadded field lengths of a concatenation (pipapo needs them), e.g. `[4, 1, 2]`.
    pub concat: Vec<u8>,
    /// A verdict map (`: verdict`).
    pub verdict_map: bool,
}

/// A named set (or map) with `spec`, ready for `Batch::add` and raw elements.
pub fn new_set<'a>(table: &'a Table, name: &CStr, id: u32, spec: &SetSpec) -> Set<'a, RawKey> {
    let set: Set<'a, RawKey> = Set::new_named(name, id, table, table.get_family());
    let p = set.as_ptr().as_ptr();
    // SAFETY: `p` is a live nftnl_set owned by `set`; libnftnl copies every value passed.
    unsafe {
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, spec.key_type);
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, spec.key_len);
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, spec.flags);
        if !spec.concat.is_empty() {
            sys::nftnl_set_set_data(
                p,
                sys::NFTNL_SET_DESC_CONCAT as u16,
                spec.concat.as_ptr().cast::<c_void>(),
                spec.concat.len() as u32,
            );
        }
        if spec.verdict_map {
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, libc::NFT_DATA_VERDICT);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, 0);
        }
    }
    set
}

/// A set element as sent to (and dumped from) the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawElem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub flags: u32,
    /// The verdict of a verdict map element.
    pub verdict: Option<RawVerdict>,
    /// `timeout`, in milliseconds, of an element of a `flags timeout` set.
    pub timeout_ms: Option<u64>,
}

/// A verdict map element's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RawVerdict {
    Return,
    Jump(CString),
    Goto(CString),
}

/// Appends `elem` to the set's in-memory element list; `Set::elems_iter` then yields the
/// NEWSETELEM / DELSETELEM messages (split to fit the netlink message size).
pub fn push_elem(set: &Set<'_, RawKey>, elem: &RawElem) {
    // SAFETY: the element is fully initialised before ownership passes to the set, which frees
    // it; every buffer passed is copied by libnftnl.
    unsafe {
        let e = sys::nftnl_set_elem_alloc();
        if e.is_null() {
            std::process::abort();
        }
        sys::nftnl_set_elem_set(
            e,
            sys::NFTNL_SET_ELEM_KEY as u16,
            elem.key.as_ptr().cast::<c_void>(),
            elem.key.len() as u32,
        );
        if let Some(end) = &elem.key_end {
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY_END as u16,
                end.as_ptr().cast::<c_void>(),
                end.len() as u32,
            );
        }
        if elem.flags != 0 {
            sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16, elem.flags);
        }
        if let Some(ms) = elem.timeout_ms {
            sys::nftnl_set_elem_set_u64(e, sys::NFTNL_SET_ELEM_TIMEOUT as u16, ms);
        }
        let (code, chain) = match &elem.verdict {
            None => (None, None),
            Some(RawVerdict::Return) => (Some(libc::NFT_RETURN), None),
            Some(RawVerdict::Jump(c)) => (Some(libc::NFT_JUMP), Some(c)),
            Some(RawVerdict::Goto(c)) => (Some(libc::NFT_GOTO), Some(c)),
        };
        if let Some(code) = code {
            sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16, code as u32);
        }
        if let Some(chain) = chain {
            sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, chain.as_ptr());
        }
        sys::nftnl_set_elem_add(set.as_ptr().as_ptr(), e);
    }
}

fn alloc_expr(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: plain allocation; a null return (out of memory) aborts like nftnl's try_alloc.
    match NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }) {
        Some(e) => e,
        None => std::process::abort(),
    }
}

/// `payload load <len>b @ <base> + <offset> => reg <dreg>`.
#[derive(Clone, Copy, Debug)]
pub struct PayloadLoad {
    pub base: u32,
    pub offset: u32,
    pub len: u32,
    pub dreg: u32,
}

impl PayloadLoad {
    /// `ip saddr`/`ip daddr` (`daddr` true) or the IPv6 equivalents.
    pub fn addr(v6: bool, daddr: bool, dreg: u32) -> Self {
        let (offset, len) = match (v6, daddr) {
            (false, false) => (12, 4),
            (false, true) => (16, 4),
            (true, false) => (8, 16),
            (true, true) => (24, 16),
        };
        Self {
            base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            offset,
            len,
            dreg,
        }
    }

    /// The ICMP(v6) type: first byte of the transport header.
    pub fn icmp_type(dreg: u32) -> Self {
        Self {
            base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            offset: 0,
            len: 1,
            dreg,
        }
    }

    /// `tcp flags`: byte 13 of the TCP header.
    pub fn tcp_flags(dreg: u32) -> Self {
        Self {
            base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            offset: 13,
            len: 1,
            dreg,
        }
    }

    /// `th dport`: the destination port is at offset 2 for TCP, UDP and SCTP alike.
    pub fn th_sport(dreg: u32) -> Self {
        Self {
            base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            offset: 0,
            len: 2,
            dreg,
        }
    }

    pub fn th_dport(dreg: u32) -> Self {
        Self {
            base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            offset: 2,
            len: 2,
            dreg,
        }
    }
}

impl Expression for PayloadLoad {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc_expr(c"payload");
        // SAFETY: `e` is a fresh payload expression; u32 attributes are copied.
        unsafe {
            let p = e.as_ptr();
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, self.base);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, self.offset);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, self.len);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, self.dreg);
        }
        e
    }
}

/// `meta load <key> => reg <dreg>`.
#[derive(Clone, Copy, Debug)]
pub struct MetaLoad {
    pub key: u32,
    pub dreg: u32,
}

impl MetaLoad {
    pub fn l4proto(dreg: u32) -> Self {
        Self {
            key: libc::NFT_META_L4PROTO as u32,
            dreg,
        }
    }
}

impl Expression for MetaLoad {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc_expr(c"meta");
        // SAFETY: `e` is a fresh meta expression; u32 attributes are copied.
        unsafe {
            sys::nftnl_expr_set_u32(e.as_ptr(), sys::NFTNL_EXPR_META_KEY as u16, self.key);
            sys::nftnl_expr_set_u32(e.as_ptr(), sys::NFTNL_EXPR_META_DREG as u16, self.dreg);
        }
        e
    }
}

/// `NFT_LOOKUP_F_INV` of the kernel's `nft_lookup_flags`.
const NFT_LOOKUP_F_INV: u32 = 1;

/// `lookup reg 1 set <name> [dreg <dreg>]`; with the verdict register it is a `vmap`.
#[derive(Clone, Debug)]
pub struct LookupExt {
    pub set: CString,
    pub set_id: u32,
    pub dreg: Option<u32>,
    /// Matches when the key is not in the set (`!= @set`).
    pub invert: bool,
}

impl Expression for LookupExt {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc_expr(c"lookup");
        // SAFETY: `e` is a fresh lookup expression; the set name is copied by libnftnl.
        unsafe {
            let p = e.as_ptr();
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_SREG as u16, REG1);
            sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.set.as_ptr());
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.set_id);
            if let Some(d) = self.dreg {
                sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_DREG as u16, d);
            }
            if self.invert {
                sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_FLAGS as u16, NFT_LOOKUP_F_INV);
            }
        }
        e
    }
}

/// `log prefix "..." group N`: the packet goes to NFLOG group `group`, where the daemon reads
/// it. nftnl has no log expression at all.
#[derive(Clone, Debug)]
pub struct Log {
    pub prefix: CString,
    pub group: u16,
}

impl Expression for Log {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc_expr(c"log");
        // SAFETY: `e` is a fresh log expression; the prefix is copied by libnftnl.
        unsafe {
            sys::nftnl_expr_set_str(
                e.as_ptr(),
                sys::NFTNL_EXPR_LOG_PREFIX as u16,
                self.prefix.as_ptr(),
            );
            sys::nftnl_expr_set_u16(e.as_ptr(), sys::NFTNL_EXPR_LOG_GROUP as u16, self.group);
        }
        e
    }
}

/// `limit rate N/second burst B packets`: over the rate, the rest of the rule is skipped.
/// nftnl has no limit expression either.
#[derive(Clone, Debug)]
pub struct Limit {
    pub per_second: u64,
    pub burst: u32,
}

/// `NFT_LIMIT_PKTS`: the limit counts packets, not bytes.
const NFT_LIMIT_PKTS: u32 = 0;

impl Expression for Limit {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc_expr(c"limit");
        // SAFETY: `e` is a fresh limit expression; every attribute is a plain integer.
        unsafe {
            let p = e.as_ptr();
            sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_LIMIT_RATE as u16, self.per_second);
            sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_LIMIT_UNIT as u16, 1);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LIMIT_BURST as u16, self.burst);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LIMIT_TYPE as u16, NFT_LIMIT_PKTS);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LIMIT_FLAGS as u16, 0);
        }
        e
    }
}

/// `queue num N bypass`, as the xtables `NFQUEUE` target (revision 3) through nft_compat: the
/// native `queue` expression needs `CONFIG_NFT_QUEUE`, which some kernels lack while they have
/// the xtables target (iptables-nft uses it). `nft` lists both the same way.
#[derive(Clone, Debug)]
pub struct NfQueueTarget {
    pub queue: u16,
}

/// `NFQ_FLAG_BYPASS`: with no listener bound to the queue, the packet is accepted.
const NFQ_FLAG_BYPASS: u16 = 0x01;

impl Expression for NfQueueTarget {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc_expr(c"target");
        // struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }, in host byte order,
        // padded to XT_ALIGN (8 bytes).
        let mut info = [0u8; 8];
        info[0..2].copy_from_slice(&self.queue.to_ne_bytes());
        info[2..4].copy_from_slice(&1u16.to_ne_bytes());
        info[4..6].copy_from_slice(&NFQ_FLAG_BYPASS.to_ne_bytes());
        // SAFETY: `e` is a fresh target expression. The name is copied by libnftnl; the info
        // buffer is not: the target expression keeps the pointer and frees it with the
        // expression, so it gets its own malloc'd copy (ownership passes to libnftnl).
        unsafe {
            let p = e.as_ptr();
            sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_TG_NAME as u16, c"NFQUEUE".as_ptr());
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_TG_REV as u16, 3);
            let buf = libc::malloc(info.len()).cast::<u8>();
            if buf.is_null() {
                std::process::abort();
            }
            std::ptr::copy_nonoverlapping(info.as_ptr(), buf, info.len());
            sys::nftnl_expr_set(
                p,
                sys::NFTNL_EXPR_TG_INFO as u16,
                buf.cast::<c_void>().cast_const(),
                info.len() as u32,
            );
        }
        e
    }
}

// --- read-back -------------------------------------------------------------------------------

/// Which object kind a dump request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpKind {
    Tables,
    Chains,
    Sets,
    Rules,
}

/// Writes a dump request (`NLM_F_DUMP`) for `kind` in `family`, filtered to `table` when given,
/// into `buf` (at least 4 KiB). Returns the message length.
pub fn build_dump_request(
    buf: &mut [u8],
    kind: DumpKind,
    family: u16,
    table: Option<&CStr>,
    seq: u32,
) -> usize {
    assert!(buf.len() >= 4096, "dump request buffer too small");
    let msg_type = match kind {
        DumpKind::Tables => libc::NFT_MSG_GETTABLE,
        DumpKind::Chains => libc::NFT_MSG_GETCHAIN,
        DumpKind::Sets => libc::NFT_MSG_GETSET,
        DumpKind::Rules => libc::NFT_MSG_GETRULE,
    } as u16;
    let flags = (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    // SAFETY: `buf` holds 4 KiB, far more than a header plus one table-name attribute
    // (names are at most 256 bytes); the temporary objects are freed before returning.
    unsafe {
        let h = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast::<c_char>(),
            msg_type,
            family,
            flags,
            seq,
        );
        if let Some(t) = table {
            match kind {
                DumpKind::Tables => {}
                DumpKind::Chains => {
                    let c = sys::nftnl_chain_alloc();
                    sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, t.as_ptr());
                    sys::nftnl_chain_nlmsg_build_payload(h, c);
                    sys::nftnl_chain_free(c);
                }
                DumpKind::Sets => {
                    let s = sys::nftnl_set_alloc();
                    sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
                    sys::nftnl_set_nlmsg_build_payload(h, s);
                    sys::nftnl_set_free(s);
                }
                DumpKind::Rules => {
                    let r = sys::nftnl_rule_alloc();
                    sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, t.as_ptr());
                    sys::nftnl_rule_nlmsg_build_payload(h, r);
                    sys::nftnl_rule_free(r);
                }
            }
        }
        (*h).nlmsg_len as usize
    }
}

/// Writes a GETSETELEM dump request for one set into `buf` (at least 4 KiB).
pub fn build_elems_request(
    buf: &mut [u8],
    family: u16,
    table: &CStr,
    set: &CStr,
    seq: u32,
) -> usize {
    assert!(buf.len() >= 4096, "dump request buffer too small");
    let flags = (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    // SAFETY: as in `build_dump_request`; two names of at most 256 bytes fit in 4 KiB.
    unsafe {
        let h = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast::<c_char>(),
            libc::NFT_MSG_GETSETELEM as u16,
            family,
            flags,
            seq,
        );
        let s = sys::nftnl_set_alloc();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, set.as_ptr());
        sys::nftnl_set_elems_nlmsg_build_payload(h, s);
        sys::nftnl_set_free(s);
        (*h).nlmsg_len as usize
    }
}

unsafe fn cstr_attr(p: *const c_char) -> Option<String> {
    // SAFETY: libnftnl returns either null or a NUL-terminated string it owns.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A parsed object of a dump: its table and name (for rules: the chain name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedObject {
    pub table: String,
    pub name: String,
}

/// Parses one dump reply message of `kind`.
///
/// # Safety
/// `nlh` must point to a complete netlink message of `nlh.nlmsg_len` bytes.
unsafe fn parse_dumped_at(nlh: *const libc::nlmsghdr, kind: DumpKind) -> Option<DumpedObject> {
    // SAFETY: the caller guarantees a complete message; libnftnl validates attributes and the
    // objects are freed on every path.
    unsafe {
        match kind {
            DumpKind::Tables => {
                let t = sys::nftnl_table_alloc();
                let ok = sys::nftnl_table_nlmsg_parse(nlh, t) >= 0;
                let name = ok
                    .then(|| cstr_attr(sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16)))
                    .flatten();
                sys::nftnl_table_free(t);
                name.map(|n| DumpedObject {
                    table: n.clone(),
                    name: n,
                })
            }
            DumpKind::Chains => {
                let c = sys::nftnl_chain_alloc();
                let ok = sys::nftnl_chain_nlmsg_parse(nlh, c) >= 0;
                let out = if ok {
                    cstr_attr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)).zip(
                        cstr_attr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)),
                    )
                } else {
                    None
                };
                sys::nftnl_chain_free(c);
                out.map(|(table, name)| DumpedObject { table, name })
            }
            DumpKind::Sets => {
                let s = sys::nftnl_set_alloc();
                let ok = sys::nftnl_set_nlmsg_parse(nlh, s) >= 0;
                let out = if ok {
                    cstr_attr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_TABLE as u16)).zip(
                        cstr_attr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)),
                    )
                } else {
                    None
                };
                sys::nftnl_set_free(s);
                out.map(|(table, name)| DumpedObject { table, name })
            }
            DumpKind::Rules => {
                let r = sys::nftnl_rule_alloc();
                let ok = sys::nftnl_rule_nlmsg_parse(nlh, r) >= 0;
                let out = if ok {
                    cstr_attr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16)).zip(
                        cstr_attr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16)),
                    )
                } else {
                    None
                };
                sys::nftnl_rule_free(r);
                out.map(|(table, name)| DumpedObject { table, name })
            }
        }
    }
}

/// Parses one GETSETELEM dump reply into its elements.
///
/// # Safety
/// `nlh` must point to a complete netlink message of `nlh.nlmsg_len` bytes.
unsafe fn parse_elems_at(nlh: *const libc::nlmsghdr) -> Vec<RawElem> {
    let mut out = Vec::new();
    // SAFETY: the caller guarantees a complete message; pointers returned by
    // nftnl_set_elem_get stay valid while the set is alive and are copied out at once.
    unsafe {
        let s = sys::nftnl_set_alloc();
        if sys::nftnl_set_elems_nlmsg_parse(nlh, s) >= 0 {
            let it = sys::nftnl_set_elems_iter_create(s);
            if !it.is_null() {
                let mut e = sys::nftnl_set_elems_iter_next(it);
                while !e.is_null() {
                    out.push(RawElem {
                        key: elem_bytes(e, sys::NFTNL_SET_ELEM_KEY).unwrap_or_default(),
                        key_end: elem_bytes(e, sys::NFTNL_SET_ELEM_KEY_END),
                        timeout_ms: None,
                        flags: if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_FLAGS as u16) {
                            sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
                        } else {
                            0
                        },
                        verdict: elem_verdict(e),
                    });
                    e = sys::nftnl_set_elems_iter_next(it);
                }
                sys::nftnl_set_elems_iter_destroy(it);
            }
        }
        sys::nftnl_set_free(s);
    }
    out
}

/// The verdict of a dumped map element (`None` in a plain set).
///
/// # Safety
/// `e` must be a live element.
unsafe fn elem_verdict(e: *mut sys::nftnl_set_elem) -> Option<RawVerdict> {
    // SAFETY: `e` is live; the chain string is copied out before the element goes away.
    unsafe {
        if !sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_VERDICT as u16) {
            return None;
        }
        let code = sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16) as i32;
        let chain = || {
            let p = sys::nftnl_set_elem_get_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_owned())
        };
        match code {
            libc::NFT_RETURN => Some(RawVerdict::Return),
            libc::NFT_JUMP => chain().map(RawVerdict::Jump),
            libc::NFT_GOTO => chain().map(RawVerdict::Goto),
            _ => None,
        }
    }
}

unsafe fn elem_bytes(e: *mut sys::nftnl_set_elem, attr: u32) -> Option<Vec<u8>> {
    // SAFETY: `e` is a live element; nftnl_set_elem_get returns a pointer into it and its length.
    unsafe {
        if !sys::nftnl_set_elem_is_set(e, attr as u16) {
            return None;
        }
        let mut len: u32 = 0;
        let p = sys::nftnl_set_elem_get(e, attr as u16, &mut len);
        (!p.is_null()).then(|| std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec())
    }
}

/// Serialises any nftnl message (as `Add`) into a standalone buffer, so that a locally built
/// rule can be parsed back exactly as a dumped one is.
pub fn nlmsg_bytes<T: nftnl::NlMsg>(msg: &T) -> Vec<u8> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: the buffer has the maximum netlink message size nftnl's NlMsg contract requires.
    unsafe { msg.write(buf.as_mut_ptr().cast::<c_void>(), 0, nftnl::MsgType::Add) };
    let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    buf.truncate(len.min(buf.len()));
    buf
}

/// What a rule with a counter does after counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CountedVerdict {
    /// `counter drop`: the end of an enforced per-pod chain.
    Drop,
    /// `counter return`: the end of a per-pod chain in audit mode.
    Return,
    Other,
}

/// A rule's counter: its chain, the packets it counted and the verdict after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounter {
    pub chain: String,
    pub packets: u64,
    pub verdict: CountedVerdict,
}

/// The first `counter` of a rule message, with the rule's verdict: the counted `drop` or
/// `return` ending each per-pod chain is its only counter. `None` for a rule without one.
///
/// # Safety
/// `nlh` must point to a complete netlink message of `nlh.nlmsg_len` bytes.
unsafe fn rule_counter_at(nlh: *const libc::nlmsghdr) -> Option<RuleCounter> {
    // SAFETY: the caller guarantees a complete message; every libnftnl object is freed and
    // every string copied before returning.
    unsafe {
        let r = sys::nftnl_rule_alloc();
        if sys::nftnl_rule_nlmsg_parse(nlh, r) < 0 {
            sys::nftnl_rule_free(r);
            return None;
        }
        let chain = cstr_attr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16));
        let mut packets = None;
        let mut verdict = CountedVerdict::Other;
        let it = sys::nftnl_expr_iter_create(r);
        if !it.is_null() {
            let mut e = sys::nftnl_expr_iter_next(it);
            while !e.is_null() {
                let name = cstr_attr(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16));
                match name.as_deref() {
                    Some("counter") if packets.is_none() => {
                        packets = Some(sys::nftnl_expr_get_u64(
                            e,
                            sys::NFTNL_EXPR_CTR_PACKETS as u16,
                        ));
                    }
                    Some("immediate")
                        if sys::nftnl_expr_is_set(e, sys::NFTNL_EXPR_IMM_VERDICT as u16) =>
                    {
                        let v = sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_IMM_VERDICT as u16);
                        verdict = match v as i32 {
                            x if x == libc::NF_DROP => CountedVerdict::Drop,
                            x if x == libc::NFT_RETURN => CountedVerdict::Return,
                            _ => CountedVerdict::Other,
                        };
                    }
                    _ => {}
                }
                e = sys::nftnl_expr_iter_next(it);
            }
            sys::nftnl_expr_iter_destroy(it);
        }
        sys::nftnl_rule_free(r);
        Some(RuleCounter {
            chain: chain?,
            packets: packets?,
            verdict,
        })
    }
}

/// Calls `f` with a pointer to the netlink message `msg`, or returns `None` when `msg` is not
/// one whole message (shorter than its header or than the length its header gives). A message
/// that is not 4-byte aligned in `msg` is copied to an aligned buffer first, as libnftnl reads
/// the header through a `struct nlmsghdr *`.
fn with_nlmsg<R>(msg: &[u8], f: impl FnOnce(*const libc::nlmsghdr) -> R) -> Option<R> {
    let hdr = std::mem::size_of::<libc::nlmsghdr>();
    let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    if len < hdr || len > msg.len() {
        return None;
    }
    let msg = &msg[..len];
    if msg
        .as_ptr()
        .align_offset(std::mem::align_of::<libc::nlmsghdr>())
        == 0
    {
        return Some(f(msg.as_ptr().cast()));
    }
    let mut aligned = vec![0u32; len.div_ceil(4)];
    for (word, chunk) in aligned.iter_mut().zip(msg.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(b);
    }
    Some(f(aligned.as_ptr().cast()))
}

/// Parses one dump reply message of `kind`; `None` for a truncated or foreign message.
pub fn parse_dumped(msg: &[u8], kind: DumpKind) -> Option<DumpedObject> {
    // SAFETY: `with_nlmsg` passes a pointer to a whole, aligned message of `nlmsg_len` bytes.
    with_nlmsg(msg, |nlh| unsafe { parse_dumped_at(nlh, kind) }).flatten()
}

/// Parses one GETSETELEM dump reply into its elements (none for a truncated message).
pub fn parse_elems(msg: &[u8]) -> Vec<RawElem> {
    // SAFETY: `with_nlmsg` passes a pointer to a whole, aligned message of `nlmsg_len` bytes.
    with_nlmsg(msg, |nlh| unsafe { parse_elems_at(nlh) }).unwrap_or_default()
}

/// The first counter of a rule message with the rule's verdict; see `rule_counter_at`.
pub fn rule_counter(msg: &[u8]) -> Option<RuleCounter> {
    // SAFETY: `with_nlmsg` passes a pointer to a whole, aligned message of `nlmsg_len` bytes.
    with_nlmsg(msg, |nlh| unsafe { rule_counter_at(nlh) }).flatten()
}

/// The mnl netfilter socket of [`super::netlink::NlSocket`], movable between threads and
/// lending its descriptor to `nix`.
pub struct NetfilterSocket(mnl::Socket);

// SAFETY: an mnl_socket is a file descriptor plus its bound address, with no thread affinity
// (the network namespace is fixed when the socket is created). It is not `Sync`: a batch
// exchange must not interleave with another on the same socket.
unsafe impl Send for NetfilterSocket {}

impl NetfilterSocket {
    /// Opens a netfilter socket in the calling thread's network namespace.
    pub fn open() -> std::io::Result<Self> {
        Ok(Self(mnl::Socket::new(mnl::Bus::Netfilter)?))
    }

    pub fn portid(&self) -> u32 {
        self.0.portid()
    }

    pub fn send(&self, data: &[u8]) -> std::io::Result<usize> {
        self.0.send(data)
    }
}

impl AsRawFd for NetfilterSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for NetfilterSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the mnl socket, which closes it only when dropped;
        // the borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

/// Turns on a boolean `SOL_NETLINK` option (`NETLINK_EXT_ACK`, `NETLINK_CAP_ACK`: `nix` has
/// neither).
pub fn set_netlink_flag(sock: &impl AsFd, option: i32) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size; the descriptor is borrowed open.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_NETLINK,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftnl::{Batch, MsgType, ProtoFamily};

    #[test]
    fn concat_type_matches_nft() {
        // nft: ipv4_addr . inet_proto . inet_service
        assert_eq!(
            dtype::concat(&[dtype::IPADDR, dtype::INET_PROTOCOL, dtype::INET_SERVICE]),
            (7 << 12) | (12 << 6) | 13
        );
        assert_eq!(reg32(1), 9);
        assert_eq!(
            reg32(4),
            2,
            "IPv6 concat: the protocol goes to 128-bit reg 2"
        );
        assert_eq!(reg32(5), 13);
    }

    #[test]
    fn set_with_elements_serialises() {
        let table = Table::new(c"t", ProtoFamily::Inet);
        let spec = SetSpec {
            key_type: dtype::IPADDR,
            key_len: 4,
            flags: NFT_SET_INTERVAL,
            concat: vec![],
            verdict_map: false,
        };
        let set = new_set(&table, c"s", 1, &spec);
        push_elem(
            &set,
            &RawElem {
                key: vec![10, 0, 0, 0],
                ..Default::default()
            },
        );
        push_elem(
            &set,
            &RawElem {
                key: vec![11, 0, 0, 0],
                flags: ELEM_INTERVAL_END,
                ..Default::default()
            },
        );
        let mut batch = Batch::new();
        batch.add(&set, MsgType::Add);
        let mut n = 0;
        for m in set.elems_iter() {
            batch.add(&m, MsgType::Add);
            n += 1;
        }
        assert_eq!(n, 1, "two small elements fit one message");
        let fin = batch.finalize();
        let bytes: usize = fin.iter().map(|p| p.len()).sum();
        assert!(bytes > 64);
    }

    #[test]
    fn dump_request_has_header() {
        let mut buf = vec![0u8; 4096];
        let n = build_dump_request(&mut buf, DumpKind::Chains, 1, Some(c"nftpol"), 7);
        assert!(n > 16 && n < 100, "{n}");
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        assert_eq!(seq, 7);
    }

    #[test]
    fn truncated_messages_are_not_parsed() {
        let table = Table::new(c"nftpol", nftnl::ProtoFamily::Inet);
        let chain = nftnl::Chain::new(c"c", &table);
        let mut rule = Rule::new(&chain);
        rule.add_expr(&nftnl::expr::Verdict::Accept);
        let msg = nlmsg_bytes(&rule);
        let parsed = parse_dumped(&msg, DumpKind::Rules).expect("a whole message parses");
        assert_eq!(parsed.table, "nftpol");
        for cut in [0, 3, 15, msg.len() - 1] {
            assert_eq!(parse_dumped(&msg[..cut], DumpKind::Rules), None);
            assert!(parse_elems(&msg[..cut]).is_empty());
            assert_eq!(rule_counter(&msg[..cut]), None);
        }
    }

    #[test]
    fn misaligned_messages_are_parsed_from_a_copy() {
        let table = Table::new(c"nftpol", nftnl::ProtoFamily::Inet);
        let chain = nftnl::Chain::new(c"c", &table);
        let mut rule = Rule::new(&chain);
        rule.add_expr(&nftnl::expr::Counter);
        rule.add_expr(&nftnl::expr::Verdict::Drop);
        let msg = nlmsg_bytes(&rule);
        let mut shifted = vec![0u8; msg.len() + 1];
        shifted[1..].copy_from_slice(&msg);
        assert_eq!(
            parse_dumped(&shifted[1..], DumpKind::Rules),
            parse_dumped(&msg, DumpKind::Rules)
        );
        let c = rule_counter(&shifted[1..]).expect("a counter");
        assert_eq!((c.chain.as_str(), c.verdict), ("c", CountedVerdict::Drop));
    }
}
