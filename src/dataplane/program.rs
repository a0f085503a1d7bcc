//! Turning a [`Ruleset`] (or the difference between two) into one nftnl batch, with a label per
//! netlink message so that a rejected batch names the object that caused it.
//!
//! Creation order matters twice: the kernel needs sets before the rules that look them up and
//! chains before the map elements that jump to them, and `nft list` prints objects in creation
//! order, which `render` reproduces (sets, maps, pod chains, base chains).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::IpAddr;

use nftnl::expr::{Bitwise, Cmp, CmpOp, Conntrack, Counter, Meta, Verdict};
use nftnl::{
    Batch, Chain as NftChain, FinalizedBatch, Hook as NftHook, MsgType, Policy, ProtoFamily,
    Rule as NftRule, Table,
};

use super::netlink::Labels;
use super::render::{element_text, rule_text};
use super::ruleset::{
    AddrField, AddrRange, Chain, Element, Family, Hook, Jump, LOG_BURST, LOG_RATE_PER_SECOND,
    LogTo, NamedSet, PodDirection, Rule, Ruleset, SetKind, TABLE, VerdictMap,
};
use super::shape::{self, RuleShape};
use super::sys::{
    self, ELEM_INTERVAL_END, LookupExt, MetaLoad, NFT_SET_CONCAT, NFT_SET_INTERVAL, NFT_SET_MAP,
    NFT_SET_TIMEOUT, PayloadLoad, RawElem, RawVerdict, SetSpec, dtype,
};
use crate::policy::model::Protocol;

pub const FAMILY: ProtoFamily = ProtoFamily::Inet;

/// A name with an interior NUL cannot come from Kubernetes; refuse it rather than truncate.
#[derive(Debug, thiserror::Error)]
#[error("object name {0:?} contains a NUL byte")]
pub struct BadName(pub String);

pub fn cname(s: &str) -> Result<CString, BadName> {
    CString::new(s).map_err(|_| BadName(s.to_string()))
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `addr + 1` in network byte order; `None` past the last address.
fn successor(ip: &IpAddr) -> Option<Vec<u8>> {
    match ip {
        IpAddr::V4(a) => u32::from(*a)
            .checked_add(1)
            .map(|v| v.to_be_bytes().to_vec()),
        IpAddr::V6(a) => u128::from(*a)
            .checked_add(1)
            .map(|v| v.to_be_bytes().to_vec()),
    }
}

fn tuple_key(addr: &IpAddr, proto: u8, port: u16) -> Vec<u8> {
    // Every concatenation field is padded to a 4-byte register.
    let mut k = addr_bytes(addr);
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

fn raw_verdict(to: &Jump) -> Result<RawVerdict, BadName> {
    Ok(match to {
        Jump::Return => RawVerdict::Return,
        Jump::Goto(chain) => RawVerdict::Goto(cname(chain)?),
    })
}

/// An rbtree range: a start element (with the verdict, in a map) plus an interval-end element
/// at `hi + 1` (none when `hi` is the last address).
fn rbtree_range(r: &AddrRange, verdict: Option<RawVerdict>) -> Vec<RawElem> {
    let mut v = vec![RawElem {
        key: addr_bytes(&r.lo),
        verdict,
        ..Default::default()
    }];
    if let Some(next) = successor(&r.hi) {
        v.push(RawElem {
            key: next,
            flags: ELEM_INTERVAL_END,
            ..Default::default()
        });
    }
    v
}

/// A pipapo range: one element with `key_end`.
fn pipapo_range(
    addrs: &AddrRange,
    protocol: Protocol,
    (lo, hi): (u16, u16),
    verdict: Option<RawVerdict>,
) -> Vec<RawElem> {
    vec![RawElem {
        key: tuple_key(&addrs.lo, protocol.number(), lo),
        key_end: Some(tuple_key(&addrs.hi, protocol.number(), hi)),
        verdict,
        ..Default::default()
    }]
}

/// The kernel elements of one set or decision map element.
pub fn raw_elements(element: &Element) -> Result<Vec<RawElem>, BadName> {
    Ok(match element {
        Element::Addr(r) => rbtree_range(r, None),
        Element::Tuple {
            addrs,
            protocol,
            ports,
        } => pipapo_range(addrs, *protocol, *ports, None),
        Element::AddrTo { addrs, to } => rbtree_range(addrs, Some(raw_verdict(to)?)),
        Element::TupleTo {
            addrs,
            protocol,
            ports,
            to,
        } => pipapo_range(addrs, *protocol, *ports, Some(raw_verdict(to)?)),
    })
}

pub fn raw_map_entry(ip: &IpAddr, chain: &str) -> Result<RawElem, BadName> {
    Ok(RawElem {
        key: addr_bytes(ip),
        verdict: Some(RawVerdict::Jump(cname(chain)?)),
        ..Default::default()
    })
}

pub fn set_spec(set: &NamedSet) -> SetSpec {
    let (addr_type, addr_len) = match set.family {
        Family::V4 => (dtype::IPADDR, 4u8),
        Family::V6 => (dtype::IP6ADDR, 16u8),
    };
    match set.kind {
        SetKind::Addr => SetSpec {
            key_type: addr_type,
            key_len: u32::from(addr_len),
            flags: NFT_SET_INTERVAL,
            concat: vec![],
            verdict_map: false,
        },
        SetKind::Learned => SetSpec {
            key_type: addr_type,
            key_len: u32::from(addr_len),
            flags: NFT_SET_TIMEOUT,
            concat: vec![],
            verdict_map: false,
        },
        SetKind::AddrProtoPort | SetKind::AddrProtoPortDecide => {
            let map = set.kind == SetKind::AddrProtoPortDecide;
            SetSpec {
                key_type: dtype::concat(&[addr_type, dtype::INET_PROTOCOL, dtype::INET_SERVICE]),
                key_len: u32::from(addr_len) + 4 + 4,
                flags: NFT_SET_INTERVAL | NFT_SET_CONCAT | if map { NFT_SET_MAP } else { 0 },
                concat: vec![addr_len, 1, 2],
                verdict_map: map,
            }
        }
        SetKind::AddrDecide => SetSpec {
            key_type: addr_type,
            key_len: u32::from(addr_len),
            flags: NFT_SET_INTERVAL | NFT_SET_MAP,
            concat: vec![],
            verdict_map: true,
        },
    }
}

pub fn map_spec(map: &VerdictMap) -> SetSpec {
    let (key_type, key_len) = match map.family {
        Family::V4 => (dtype::IPADDR, 4),
        Family::V6 => (dtype::IP6ADDR, 16),
    };
    SetSpec {
        key_type,
        key_len,
        flags: NFT_SET_MAP,
        concat: vec![],
        verdict_map: true,
    }
}

/// Element operation within a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemOp {
    Add,
    Del,
}

/// One transaction under construction.
pub struct Tx {
    batch: Batch,
    labels: Labels,
    table: Table,
    next_set_id: u32,
    /// One element per message, so that an error's seq names the exact element.
    per_element: bool,
}

impl Tx {
    pub fn new(per_element: bool) -> Self {
        Self {
            batch: Batch::new(),
            labels: Labels::default(),
            table: Table::new(c"nftpol", FAMILY),
            next_set_id: 1,
            per_element,
        }
    }

    pub fn messages(&self) -> usize {
        self.labels.len()
    }

    /// The label of every message so far, in batch order: what the transaction does, readable
    /// (and checkable) without sending it.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn finish(self) -> (FinalizedBatch, Labels) {
        (self.batch.finalize(), self.labels)
    }

    fn add<T: nftnl::NlMsg>(&mut self, msg: &T, op: MsgType, label: String) {
        self.batch.add(msg, op);
        self.labels.push(label);
    }

    /// `add table; delete table; add table`: the replaced table vanishes atomically with the
    /// commit, whether or not it existed (a bare delete fails with ENOENT when it does not).
    pub fn replace_table(&mut self) {
        let table = Table::new(c"nftpol", FAMILY);
        self.add(
            &table,
            MsgType::Add,
            format!("table inet {TABLE} (create for replace)"),
        );
        self.add(
            &table,
            MsgType::Del,
            format!("table inet {TABLE} (delete for replace)"),
        );
        self.add(&table, MsgType::Add, format!("table inet {TABLE}"));
    }

    /// `add table; delete table`: removes the table if present, in one transaction.
    pub fn delete_table(&mut self) {
        let table = Table::new(c"nftpol", FAMILY);
        self.add(
            &table,
            MsgType::Add,
            format!("table inet {TABLE} (create for delete)"),
        );
        self.add(&table, MsgType::Del, format!("table inet {TABLE} (delete)"));
    }

    fn set_object(
        &mut self,
        name: &str,
        spec: &SetSpec,
        op: MsgType,
        what: &str,
    ) -> Result<(), BadName> {
        let n = cname(name)?;
        let id = self.next_set_id;
        self.next_set_id += 1;
        let set = sys::new_set(&self.table, &n, id, spec);
        let verb = if op == MsgType::Add { "add" } else { "delete" };
        self.batch.add(&set, op);
        self.labels.push(format!("{verb} {what} {name}"));
        Ok(())
    }

    /// Element messages for `set_name`; `texts` give the human form of each raw element group.
    fn elements(
        &mut self,
        kind: &str,
        set_name: &str,
        spec: &SetSpec,
        groups: &[(String, Vec<RawElem>)],
        op: ElemOp,
    ) -> Result<(), BadName> {
        if groups.is_empty() {
            return Ok(());
        }
        let n = cname(set_name)?;
        let (msg_op, verb) = match op {
            ElemOp::Add => (MsgType::Add, "add"),
            ElemOp::Del => (MsgType::Del, "delete"),
        };
        if self.per_element {
            for (text, raws) in groups {
                for raw in raws {
                    let set = sys::new_set(&self.table, &n, 0, spec);
                    sys::push_elem(&set, &for_op(raw, op));
                    for m in set.elems_iter() {
                        self.batch.add(&m, msg_op);
                        self.labels
                            .push(format!("{verb} {kind} {set_name} element {text}"));
                    }
                }
            }
            return Ok(());
        }
        let set = sys::new_set(&self.table, &n, 0, spec);
        for (_, raws) in groups {
            for raw in raws {
                sys::push_elem(&set, &for_op(raw, op));
            }
        }
        let first = &groups[0].0;
        let more = groups.len() - 1;
        for m in set.elems_iter() {
            self.batch.add(&m, msg_op);
            self.labels.push(if more == 0 {
                format!("{verb} {kind} {set_name} element {first}")
            } else {
                format!("{verb} {kind} {set_name} elements {first} and {more} more")
            });
        }
        Ok(())
    }

    pub fn add_set(&mut self, set: &NamedSet) -> Result<(), BadName> {
        self.add_set_object(set)?;
        self.add_set_elements(set)
    }

    /// The set without its elements: a decision map's elements go to chains that must exist
    /// first, while `nft list` prints sets in the order they were created.
    pub fn add_set_object(&mut self, set: &NamedSet) -> Result<(), BadName> {
        self.set_object(&set.name, &set_spec(set), MsgType::Add, "set")
    }

    pub fn add_set_elements(&mut self, set: &NamedSet) -> Result<(), BadName> {
        let spec = set_spec(set);
        let groups = set
            .elements
            .iter()
            .map(|e| Ok((element_text(e), raw_elements(e)?)))
            .collect::<Result<Vec<_>, BadName>>()?;
        self.elements("set", &set.name, &spec, &groups, ElemOp::Add)
    }

    pub fn delete_set(&mut self, set: &NamedSet) -> Result<(), BadName> {
        self.set_object(&set.name, &set_spec(set), MsgType::Del, "set")
    }

    pub fn set_elements(
        &mut self,
        set: &NamedSet,
        elements: &[&Element],
        op: ElemOp,
    ) -> Result<(), BadName> {
        let groups = elements
            .iter()
            .map(|e| Ok((element_text(e), raw_elements(e)?)))
            .collect::<Result<Vec<_>, BadName>>()?;
        self.elements("set", &set.name, &set_spec(set), &groups, op)
    }

    /// Elements of a learned-address set (`flags timeout`): each address with its timeout on
    /// an add.
    pub fn learned_elements(
        &mut self,
        set: &NamedSet,
        addrs: &[(IpAddr, Option<u64>)],
        op: ElemOp,
    ) -> Result<(), BadName> {
        let groups: Vec<(String, Vec<RawElem>)> = addrs
            .iter()
            .map(|(ip, timeout_ms)| {
                (
                    ip.to_string(),
                    vec![RawElem {
                        key: addr_bytes(ip),
                        timeout_ms: *timeout_ms,
                        ..Default::default()
                    }],
                )
            })
            .collect();
        self.elements("set", &set.name, &set_spec(set), &groups, op)
    }

    pub fn add_map(&mut self, map: &VerdictMap) -> Result<(), BadName> {
        self.set_object(&map.name, &map_spec(map), MsgType::Add, "map")
    }

    pub fn map_entries<'e>(
        &mut self,
        map: &VerdictMap,
        entries: impl IntoIterator<Item = (&'e IpAddr, &'e String)>,
        op: ElemOp,
    ) -> Result<(), BadName> {
        let mut groups = Vec::new();
        for (ip, chain) in entries {
            groups.push((
                format!("{ip} : jump {chain}"),
                vec![raw_map_entry(ip, chain)?],
            ));
        }
        self.elements("map", &map.name, &map_spec(map), &groups, op)
    }

    pub fn add_chain(&mut self, chain: &Chain) -> Result<(), BadName> {
        let n = cname(&chain.name)?;
        let mut c = NftChain::new(&n, &self.table);
        if let Some(hook) = chain.hook {
            let h = match hook {
                Hook::Forward => NftHook::Forward,
                Hook::Input => NftHook::In,
                Hook::Output => NftHook::Out,
            };
            c.set_hook(h, 0);
            c.set_type(nftnl::ChainType::Filter);
            c.set_policy(Policy::Accept);
        }
        self.batch.add(&c, MsgType::Add);
        self.labels.push(format!("add chain {}", chain.name));
        for (i, rule) in chain.rules.iter().enumerate() {
            let mut r = NftRule::new(&c);
            rule_exprs(&mut r, rule)?;
            self.batch.add(&r, MsgType::Add);
            self.labels
                .push(format!("add rule {} #{i}: {}", chain.name, rule_text(rule)));
        }
        Ok(())
    }

    /// `add table; add chain <chain>; add rule <chain> queue num <queue> bypass; delete chain
    /// <chain>`: whether the kernel takes the NFQUEUE target, leaving the ruleset as it was (the
    /// table stays, empty, if it did not exist; the next apply replaces it anyway).
    pub fn probe_queue_target(&mut self, chain: &str, queue: u16) -> Result<(), BadName> {
        let table = Table::new(c"nftpol", FAMILY);
        self.add(&table, MsgType::Add, format!("table inet {TABLE}"));
        let n = cname(chain)?;
        let c = NftChain::new(&n, &self.table);
        self.batch.add(&c, MsgType::Add);
        self.labels.push(format!("add chain {chain}"));
        let mut r = NftRule::new(&c);
        r.add_expr(&sys::NfQueueTarget { queue });
        self.batch.add(&r, MsgType::Add);
        self.labels
            .push(format!("add rule {chain} #0: queue num {queue} bypass"));
        self.batch.add(&c, MsgType::Del);
        self.labels.push(format!("delete chain {chain}"));
        Ok(())
    }

    /// Deleting a chain also deletes its rules; nothing may still jump to it.
    pub fn delete_chain(&mut self, chain: &Chain) -> Result<(), BadName> {
        let n = cname(&chain.name)?;
        let c = NftChain::new(&n, &self.table);
        self.batch.add(&c, MsgType::Del);
        self.labels.push(format!("delete chain {}", chain.name));
        Ok(())
    }

    /// Every set and the chain of one pod direction (map entries are added separately).
    pub fn add_pod_objects(&mut self, pod: &PodDirection) -> Result<(), BadName> {
        for set in &pod.sets {
            self.add_set(set)?;
        }
        Ok(())
    }
}

/// Deletes identify an element by key (and interval flag); verdict data is not needed.
fn for_op(raw: &RawElem, op: ElemOp) -> RawElem {
    match op {
        ElemOp::Add => raw.clone(),
        ElemOp::Del => RawElem {
            verdict: None,
            ..raw.clone()
        },
    }
}

fn nfproto(r: &mut NftRule, family: Family) {
    let p = match family {
        Family::V4 => libc_nfproto::IPV4,
        Family::V6 => libc_nfproto::IPV6,
    };
    // In an inet table nft adds this dependency implicitly and hides it when listing.
    r.add_expr(&Meta::NfProto);
    r.add_expr(&Cmp::new(CmpOp::Eq, p));
}

const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

mod libc_nfproto {
    use nftnl::nftnl_sys::libc;
    pub const IPV4: u8 = libc::NFPROTO_IPV4 as u8;
    pub const IPV6: u8 = libc::NFPROTO_IPV6 as u8;
}

fn ct_state(r: &mut NftRule, mask: u32) {
    r.add_expr(&Conntrack::State);
    r.add_expr(&Bitwise::new(mask, 0u32));
    r.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
}

/// `ip saddr @set` (or `ip6 daddr @set`, or a vmap lookup with `dreg`): the packet's family,
/// then the address loaded into register 1 and looked up.
/// How a rule uses a lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Goes on when the key is in the set.
    Hit,
    /// Goes on when it is not (`!= @set`).
    Miss,
    /// A verdict map: the element's verdict applies; a miss goes on.
    Vmap,
}

fn lookup(r: &mut NftRule, set: &str, how: Lookup) -> Result<(), BadName> {
    r.add_expr(&LookupExt {
        set: cname(set)?,
        set_id: 0,
        dreg: (how == Lookup::Vmap).then_some(sys::REG_VERDICT),
        invert: how == Lookup::Miss,
    });
    Ok(())
}

/// `ip saddr @set` (or `ip6 daddr != @set`, or a vmap): the packet's family, then the address
/// loaded into register 1 and looked up.
fn addr_lookup(
    r: &mut NftRule,
    family: Family,
    field: AddrField,
    set: &str,
    how: Lookup,
) -> Result<(), BadName> {
    nfproto(r, family);
    addr_lookup_same_family(r, family, field, set, how)
}

/// [`addr_lookup`] in a rule that has already checked the family: nft lists one dependency.
fn addr_lookup_same_family(
    r: &mut NftRule,
    family: Family,
    field: AddrField,
    set: &str,
    how: Lookup,
) -> Result<(), BadName> {
    r.add_expr(&PayloadLoad::addr(
        family == Family::V6,
        field == AddrField::Daddr,
        sys::REG1,
    ));
    lookup(r, set, how)
}

fn log_to(r: &mut NftRule, to: &LogTo) -> Result<(), BadName> {
    r.add_expr(&sys::Log {
        prefix: cname(&to.prefix)?,
        group: to.group,
    });
    Ok(())
}

fn rule_exprs(r: &mut NftRule, rule: &Rule) -> Result<(), BadName> {
    use nftnl::expr::ct::States;
    match rule {
        Rule::CtEstablishedAccept => {
            ct_state(r, (States::ESTABLISHED | States::RELATED).bits());
            r.add_expr(&Verdict::Accept);
        }
        Rule::CtInvalidDrop => {
            ct_state(r, States::INVALID.bits());
            r.add_expr(&Verdict::Drop);
        }
        Rule::TcpNewNotSynDrop { family, field, set } => {
            addr_lookup(r, *family, *field, set, Lookup::Hit)?;
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, IPPROTO_TCP));
            r.add_expr(&PayloadLoad::tcp_flags(sys::REG1));
            r.add_expr(&Bitwise::new(TCP_SYN | TCP_ACK, 0u8));
            r.add_expr(&Cmp::new(CmpOp::Neq, TCP_SYN));
            ct_state(r, States::NEW.bits());
            r.add_expr(&Verdict::Drop);
        }
        Rule::NeighborDiscoveryAccept(t) => {
            nfproto(r, Family::V6);
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, IPPROTO_ICMPV6));
            r.add_expr(&PayloadLoad::icmp_type(sys::REG1));
            r.add_expr(&Cmp::new(CmpOp::Eq, t.icmpv6_type()));
            r.add_expr(&Verdict::Accept);
        }
        Rule::Vmap { family, field, map } => {
            addr_lookup(r, *family, *field, map, Lookup::Vmap)?;
        }
        Rule::AddrReturn {
            family,
            field,
            set,
            log,
        } => {
            addr_lookup(r, *family, *field, set, Lookup::Hit)?;
            if let Some(to) = log {
                log_to(r, to)?;
            }
            r.add_expr(&Verdict::Return);
        }
        Rule::TupleReturn {
            family,
            field,
            set,
            log,
        } => {
            tuple_lookup(r, *family, *field, set, Lookup::Hit)?;
            if let Some(to) = log {
                log_to(r, to)?;
            }
            r.add_expr(&Verdict::Return);
        }
        Rule::LimitedLog(to) => {
            r.add_expr(&sys::Limit {
                per_second: LOG_RATE_PER_SECOND,
                burst: LOG_BURST,
            });
            log_to(r, to)?;
        }
        Rule::CounterDrop => {
            r.add_expr(&Counter);
            r.add_expr(&Verdict::Drop);
        }
        Rule::CounterReturn => {
            r.add_expr(&Counter);
            r.add_expr(&Verdict::Return);
        }
        Rule::AddrDrop { family, field, set } => {
            addr_lookup(r, *family, *field, set, Lookup::Hit)?;
            r.add_expr(&Verdict::Drop);
        }
        Rule::DecideTuple { family, field, map } => {
            tuple_lookup(r, *family, *field, map, Lookup::Vmap)?;
        }
        Rule::DecideOther { family, field, map } => {
            nfproto(r, *family);
            for p in Protocol::ALL {
                r.add_expr(&Meta::L4Proto);
                r.add_expr(&Cmp::new(CmpOp::Neq, p.number()));
            }
            addr_lookup_same_family(r, *family, *field, map, Lookup::Vmap)?;
        }
        Rule::DnsHold {
            family,
            protocol,
            set,
            queue,
        } => {
            addr_lookup(r, *family, AddrField::Daddr, set, Lookup::Hit)?;
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, protocol.number()));
            r.add_expr(&PayloadLoad::th_sport(sys::REG1));
            r.add_expr(&Cmp::new(CmpOp::Eq, 53u16.to_be()));
            r.add_expr(&sys::NfQueueTarget { queue: *queue });
        }
        Rule::LearnedVerdict {
            family,
            field,
            guard,
            set,
            ports,
            log,
            verdict,
        } => {
            match guard {
                Some(g) => {
                    tuple_lookup(r, *family, *field, &g.tuple, Lookup::Miss)?;
                    if let Some(other) = &g.other {
                        addr_lookup_same_family(r, *family, *field, other, Lookup::Miss)?;
                    }
                    addr_lookup_same_family(r, *family, *field, set, Lookup::Hit)?;
                }
                None => addr_lookup(r, *family, *field, set, Lookup::Hit)?,
            }
            if let Some((protocol, lo, hi)) = ports {
                r.add_expr(&Meta::L4Proto);
                r.add_expr(&Cmp::new(CmpOp::Eq, protocol.number()));
                r.add_expr(&PayloadLoad::th_dport(sys::REG1));
                if lo == hi {
                    r.add_expr(&Cmp::new(CmpOp::Eq, lo.to_be()));
                } else {
                    // Big-endian bytes compare in numeric order (cmp is a memcmp).
                    r.add_expr(&Cmp::new(CmpOp::Gte, lo.to_be()));
                    r.add_expr(&Cmp::new(CmpOp::Lte, hi.to_be()));
                }
            }
            if let Some(to) = log {
                log_to(r, to)?;
            }
            r.add_expr(&jump(verdict)?);
        }
    }
    Ok(())
}

fn jump(j: &Jump) -> Result<Verdict, BadName> {
    Ok(match j {
        Jump::Return => Verdict::Return,
        Jump::Goto(chain) => Verdict::Goto {
            chain: cname(chain)?,
        },
    })
}

/// `ip saddr . meta l4proto . th dport @set`: fields in consecutive 32-bit registers.
fn tuple_lookup(
    r: &mut NftRule,
    family: Family,
    field: AddrField,
    set: &str,
    how: Lookup,
) -> Result<(), BadName> {
    nfproto(r, family);
    let addr_regs = match family {
        Family::V4 => 1,
        Family::V6 => 4,
    };
    r.add_expr(&PayloadLoad::addr(
        family == Family::V6,
        field == AddrField::Daddr,
        sys::REG1,
    ));
    r.add_expr(&MetaLoad::l4proto(sys::reg32(addr_regs)));
    r.add_expr(&PayloadLoad::th_dport(sys::reg32(addr_regs + 1)));
    lookup(r, set, how)
}

/// The whole ruleset as one transaction replacing the table.
pub fn full(ruleset: &Ruleset, per_element: bool) -> Result<Tx, BadName> {
    let mut tx = Tx::new(per_element);
    tx.replace_table();
    add_contents(&mut tx, ruleset)?;
    Ok(tx)
}

fn add_contents(tx: &mut Tx, ruleset: &Ruleset) -> Result<(), BadName> {
    for set in &ruleset.node_sets {
        tx.add_set(set)?;
    }
    for set in ruleset.shared_sets.values() {
        tx.add_set_object(set)?;
    }
    for set in ruleset.domains.sets.values() {
        tx.add_set(set)?;
    }
    for pod in ruleset.pods.values() {
        tx.add_pod_objects(pod)?;
    }
    for map in &ruleset.maps {
        tx.add_map(map)?;
    }
    for chain in ruleset.cluster_chains.values() {
        tx.add_chain(chain)?;
    }
    for set in ruleset.shared_sets.values() {
        tx.add_set_elements(set)?;
    }
    for pod in ruleset.pods.values() {
        tx.add_chain(&pod.chain)?;
    }
    for map in &ruleset.maps {
        tx.map_entries(map, &map.entries, ElemOp::Add)?;
    }
    for chain in &ruleset.base_chains {
        tx.add_chain(chain)?;
    }
    Ok(())
}

/// What deleting one element from a set costs the kernel, in element additions. Measured here:
/// removing an element from a concatenated interval set (the pipapo backend) rebuilds its
/// lookup tables, about 0.7 ms each (2,000 removals: 1.4 s), while adding one costs about 10 µs
/// and deleting a whole set almost nothing.
const DELETE_COST: usize = 64;

/// Whether replacing sets outright is cheaper than deleting the elements that left them.
fn cheaper_to_rebuild<'a>(pairs: impl IntoIterator<Item = (&'a NamedSet, &'a NamedSet)>) -> bool {
    let mut deletes = 0;
    let mut total = 0;
    for (os, ns) in pairs {
        total += ns.elements.len();
        if os.elements != ns.elements {
            deletes += element_diff(os, ns).0.len();
        }
    }
    deletes * DELETE_COST > total + DELETE_COST
}

/// Whether `rule` looks up one of the NetworkPolicy sets `sets`.
fn uses_set(rule: &Rule, sets: &BTreeSet<&str>) -> bool {
    rule.network_policy_set()
        .is_some_and(|set| sets.contains(set))
}

/// The changes from `old` to `new` as one transaction, or `None` when the shape changed
/// (options, base chains, maps, or a pod's sets) and a full replace is simpler.
pub fn diff(old: &Ruleset, new: &Ruleset, per_element: bool) -> Result<Option<Tx>, BadName> {
    if old.options != new.options
        || old.base_chains != new.base_chains
        || old.maps.len() != new.maps.len()
        || old
            .maps
            .iter()
            .zip(&new.maps)
            .any(|(a, b)| a.name != b.name || a.family != b.family)
        || old.node_sets.len() != new.node_sets.len()
        || old
            .node_sets
            .iter()
            .zip(&new.node_sets)
            .any(|(a, b)| a.name != b.name || a.family != b.family)
        // A cluster policy rule added, removed or changed: they are rare, and a replace keeps
        // the ordering of drop chains simple (still one transaction). A decision map that
        // comes or goes (a pod's rule list changed) is handled below.
        || old.cluster_chains != new.cluster_chains
        // Learned-address sets come and go with their rules; their elements are the DNS
        // reader's and never diffed.
        || !old.domains.sets.keys().eq(new.domains.sets.keys())
        || old.shared_sets.iter().any(|(name, a)| {
            new.shared_sets
                .get(name)
                .is_some_and(|b| a.family != b.family || a.kind != b.kind)
        })
    {
        return Ok(None);
    }
    let same_sets = |o: &PodDirection, n: &PodDirection| {
        o.sets.len() == n.sets.len()
            && o.sets
                .iter()
                .zip(&n.sets)
                .all(|(a, b)| a.name == b.name && a.family == b.family && a.kind == b.kind)
    };
    // Shared NetworkPolicy sets whose element deletions would cost more than re-adding them
    // are deleted and added again whole, with the chains of every pod that uses them.
    let rebuilt_sets: BTreeSet<&str> = old
        .shared_sets
        .iter()
        .filter(|(name, os)| {
            matches!(os.kind, SetKind::Addr | SetKind::AddrProtoPort)
                && new
                    .shared_sets
                    .get(*name)
                    .is_some_and(|ns| cheaper_to_rebuild([(*os, ns)]))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    // Pod directions whose element deletions would cost more than re-adding their sets are
    // taken out (map entries, chain, sets) and put back, in the same transaction.
    let rebuilt: BTreeSet<&String> = new
        .pods
        .iter()
        .filter(|(name, n)| {
            // A chain whose rules changed (audit mode switched, logging asked for, other
            // policies) is rebuilt whole: its rules have no stable handles to replace them by.
            old.pods.get(*name).is_some_and(|o| {
                o.chain != n.chain
                    || !same_sets(o, n)
                    || cheaper_to_rebuild(o.sets.iter().zip(&n.sets))
                    || n.chain.rules.iter().any(|r| uses_set(r, &rebuilt_sets))
            })
        })
        .map(|(name, _)| name)
        .collect();
    let rebuilt_chains: BTreeSet<&str> = rebuilt
        .iter()
        .filter_map(|name| new.pods.get(*name).map(|p| p.chain.name.as_str()))
        .collect();
    let mut tx = Tx::new(per_element);

    // 1. Map entries that go away or change target: nothing may jump to a chain being deleted.
    for (om, nm) in old.maps.iter().zip(&new.maps) {
        let gone: Vec<(&IpAddr, &String)> = om
            .entries
            .iter()
            .filter(|(ip, chain)| {
                nm.entries.get(*ip) != Some(*chain) || rebuilt_chains.contains(chain.as_str())
            })
            .collect();
        tx.map_entries(om, gone, ElemOp::Del)?;
    }
    // 2. Removed (and rebuilt) pods: chain (with its rules), then the sets its rules used.
    for (name, o) in &old.pods {
        if !new.pods.contains_key(name) || rebuilt.contains(name) {
            tx.delete_chain(&o.chain)?;
            for set in &o.sets {
                tx.delete_set(set)?;
            }
        }
    }
    // Shared sets no pod chain uses any more, and those rebuilt (their chains are gone by now).
    for (name, set) in &old.shared_sets {
        if !new.shared_sets.contains_key(name) || rebuilt_sets.contains(name.as_str()) {
            tx.delete_set(set)?;
        }
    }
    // 3. Changed pods, base chains' address sets and cluster policy rules' sets: element
    // deletes before adds, so a replaced interval never overlaps.
    let kept_shared_sets = old
        .shared_sets
        .iter()
        .filter(|(name, _)| !rebuilt_sets.contains(name.as_str()))
        .filter_map(|(name, os)| new.shared_sets.get(name).map(|ns| (os, ns)));
    for (os, ns) in old
        .node_sets
        .iter()
        .zip(&new.node_sets)
        .chain(kept_shared_sets)
    {
        if os.elements != ns.elements {
            let (del, add) = element_diff(os, ns);
            tx.set_elements(os, &del, ElemOp::Del)?;
            tx.set_elements(ns, &add, ElemOp::Add)?;
        }
    }
    for (name, n) in &new.pods {
        let Some(o) = old.pods.get(name).filter(|_| !rebuilt.contains(name)) else {
            continue;
        };
        for (os, ns) in o.sets.iter().zip(&n.sets) {
            if os.elements == ns.elements {
                continue;
            }
            let (del, add) = element_diff(os, ns);
            tx.set_elements(os, &del, ElemOp::Del)?;
            tx.set_elements(ns, &add, ElemOp::Add)?;
        }
    }
    // 4. New (and rebuilt) shared sets, then new (and rebuilt) pods: sets, then chains.
    for (name, set) in &new.shared_sets {
        if !old.shared_sets.contains_key(name) || rebuilt_sets.contains(name.as_str()) {
            tx.add_set(set)?;
        }
    }
    for (name, n) in &new.pods {
        if !old.pods.contains_key(name) || rebuilt.contains(name) {
            tx.add_pod_objects(n)?;
            tx.add_chain(&n.chain)?;
        }
    }
    // 5. New or retargeted map entries.
    for (om, nm) in old.maps.iter().zip(&new.maps) {
        let added: Vec<(&IpAddr, &String)> = nm
            .entries
            .iter()
            .filter(|(ip, chain)| {
                om.entries.get(*ip) != Some(*chain) || rebuilt_chains.contains(chain.as_str())
            })
            .collect();
        tx.map_entries(nm, added, ElemOp::Add)?;
    }
    Ok(Some(tx))
}

/// Elements to delete and to add. rbtree ranges are compared as whole ranges: the kernel
/// elements of a range (start and end) are removed and re-added together.
fn element_diff<'a>(old: &'a NamedSet, new: &'a NamedSet) -> (Vec<&'a Element>, Vec<&'a Element>) {
    let o: BTreeSet<&Element> = old.elements.iter().collect();
    let n: BTreeSet<&Element> = new.elements.iter().collect();
    let del = old.elements.iter().filter(|e| !n.contains(e)).collect();
    let add = new.elements.iter().filter(|e| !o.contains(e)).collect();
    (del, add)
}

/// One rule of chain `chain` as the netlink message that adds it.
pub fn rule_message(chain: &str, rule: &Rule) -> Result<Vec<u8>, BadName> {
    let table = Table::new(c"nftpol", FAMILY);
    let n = cname(chain)?;
    let c = NftChain::new(&n, &table);
    let mut r = NftRule::new(&c);
    rule_exprs(&mut r, rule)?;
    Ok(sys::nlmsg_bytes(&r))
}

/// Every rule of `ruleset` by chain, as the drift check compares them with the kernel's: the
/// messages that add them, parsed back ([`shape`]).
pub fn expected_rules(ruleset: &Ruleset) -> Result<BTreeMap<String, Vec<RuleShape>>, BadName> {
    let mut out = BTreeMap::new();
    for chain in ruleset.chains() {
        let mut rules = Vec::new();
        for rule in &chain.rules {
            let bytes = rule_message(&chain.name, rule)?;
            rules.extend(shape::parse_rule(&bytes));
        }
        out.insert(chain.name.clone(), rules);
    }
    Ok(out)
}

/// A set's name and the elements it should hold (`None`: not compared).
pub type ExpectedElements = (String, Option<Vec<RawElem>>);

/// The raw elements the kernel should hold for every set and map of `ruleset`, by name. A
/// learned-address set's elements are the DNS reader's: `None`, not compared.
pub fn expected_elements(ruleset: &Ruleset) -> Result<Vec<ExpectedElements>, BadName> {
    let mut out = Vec::new();
    for set in ruleset.sets() {
        if set.kind == SetKind::Learned {
            out.push((set.name.clone(), None));
            continue;
        }
        let mut v = Vec::new();
        for e in &set.elements {
            v.extend(raw_elements(e)?);
        }
        v.sort();
        out.push((set.name.clone(), Some(v)));
    }
    for map in &ruleset.maps {
        let mut v = Vec::new();
        for (ip, chain) in &map.entries {
            v.push(raw_map_entry(ip, chain)?);
        }
        v.sort();
        out.push((map.name.clone(), Some(v)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The batches `full` and `diff` build, checked without a kernel: each transaction is run
    //! message by message on a model of the table that refuses what the kernel refuses
    //! (a rule naming a missing set, a map entry jumping to a missing chain, deleting a chain
    //! something still jumps to or a set a rule still uses, touching an element of a missing
    //! set), and must end in the model of the new ruleset.

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::dataplane::ruleset::Options;
    use crate::policy::compile::{Endpoint, Isolation, NodePlan};
    use crate::policy::intervals::{AddrSet, Allowed, AllowedBuilder};
    use crate::policy::model::{ObjectKey, Protocol};

    /// Table `inet nftpol` as the kernel holds it.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Model {
        table: bool,
        /// Sets and maps by name, with their elements as text (`ip : jump chain` in a map).
        sets: BTreeMap<String, BTreeSet<String>>,
        /// Chains by name, with their rules as text.
        chains: BTreeMap<String, Vec<String>>,
    }

    impl Model {
        fn of(ruleset: &Ruleset) -> Self {
            let mut m = Model {
                table: true,
                ..Model::default()
            };
            for set in ruleset.sets() {
                let elements = set.elements.iter().map(element_text).collect();
                m.sets.insert(set.name.clone(), elements);
            }
            for map in &ruleset.maps {
                let entries = map
                    .entries
                    .iter()
                    .map(|(ip, chain)| format!("{ip} : jump {chain}"))
                    .collect();
                m.sets.insert(map.name.clone(), entries);
            }
            let chains = ruleset
                .pods
                .values()
                .map(|p| &p.chain)
                .chain(&ruleset.base_chains);
            for chain in chains {
                let rules = chain.rules.iter().map(rule_text).collect();
                m.chains.insert(chain.name.clone(), rules);
            }
            m
        }

        fn jumps_to(&self, chain: &str) -> Option<&String> {
            let suffix = format!(" : jump {chain}");
            self.sets.values().flatten().find(|e| e.ends_with(&suffix))
        }

        fn used_by(&self, set: &str) -> Option<&String> {
            let at = format!("@{set}");
            self.chains.iter().find_map(|(chain, rules)| {
                rules
                    .iter()
                    .any(|r| r.split_whitespace().any(|w| w == at))
                    .then_some(chain)
            })
        }

        /// One message, or why the kernel would refuse it.
        fn step(&mut self, label: &str) -> Result<(), String> {
            if let Some(rest) = label.strip_prefix("table inet nftpol") {
                if rest.contains("(delete") {
                    *self = Model::default();
                } else {
                    self.table = true;
                }
                return Ok(());
            }
            if !self.table {
                return Err("no table".into());
            }
            let words: Vec<&str> = label.splitn(5, ' ').collect();
            match words.as_slice() {
                ["add", "set" | "map", name] => {
                    if self
                        .sets
                        .insert(name.to_string(), BTreeSet::new())
                        .is_some()
                    {
                        return Err(format!("{name} exists"));
                    }
                }
                ["delete", "set" | "map", name] => {
                    if let Some(chain) = self.used_by(name) {
                        return Err(format!("{name} is used by chain {chain}"));
                    }
                    self.sets.remove(*name).ok_or(format!("no {name}"))?;
                }
                [verb, "set" | "map", name, "element", text] => {
                    let set = self.sets.get_mut(*name).ok_or(format!("no {name}"))?;
                    if *verb == "add" {
                        set.insert(text.to_string());
                    } else if !set.remove(*text) {
                        return Err(format!("no element {text} in {name}"));
                    }
                    if let Some((_, chain)) = text.split_once(" : jump ")
                        && *verb == "add"
                        && !self.chains.contains_key(chain)
                    {
                        return Err(format!("jump to missing chain {chain}"));
                    }
                }
                ["add", "chain", name] => {
                    if self.chains.insert(name.to_string(), Vec::new()).is_some() {
                        return Err(format!("chain {name} exists"));
                    }
                }
                ["delete", "chain", name] => {
                    if let Some(e) = self.jumps_to(name) {
                        return Err(format!("{e} still jumps to {name}"));
                    }
                    self.chains
                        .remove(*name)
                        .ok_or(format!("no chain {name}"))?;
                }
                ["add", "rule", chain, _, _] => {
                    let text = label.split_once(": ").map_or("", |(_, t)| t);
                    for set in text.split_whitespace().filter_map(|w| w.strip_prefix('@')) {
                        if !self.sets.contains_key(set) {
                            return Err(format!("rule uses missing {set}"));
                        }
                    }
                    let rules = self.chains.get_mut(*chain).ok_or("no chain")?;
                    rules.push(text.to_string());
                }
                _ => return Err("unknown message".into()),
            }
            Ok(())
        }

        /// Runs a transaction built with one element per message. The two kernel elements of
        /// an rbtree range carry the same label and count once.
        fn run(&mut self, tx: &Tx) -> Vec<String> {
            let mut labels = tx.labels().as_slice().to_vec();
            labels.dedup();
            for (i, label) in labels.iter().enumerate() {
                if let Err(why) = self.step(label) {
                    panic!("message #{i} `{label}` would be refused: {why}");
                }
            }
            labels
        }
    }

    fn nets(list: &[&str]) -> AddrSet {
        let nets: Vec<ipnet::IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        AddrSet::from_nets(nets.iter())
    }

    fn allowed(any_port: &[&str], tcp80: &[&str]) -> Allowed {
        let mut b = AllowedBuilder::default();
        if !any_port.is_empty() {
            b.add_any_port(nets(any_port));
        }
        if !tcp80.is_empty() {
            b.add_ports(Protocol::Tcp, 80, 80, nets(tcp80));
        }
        b.finish()
    }

    fn iso_of(policy: &str, allowed: Allowed) -> std::sync::Arc<Isolation> {
        std::sync::Arc::new(Isolation {
            policies: vec![ObjectKey::new("default", policy)],
            rules: vec![],
            allowed,
            log_allowed: false,
        })
    }

    fn iso(allowed: Allowed) -> std::sync::Arc<Isolation> {
        std::sync::Arc::new(Isolation {
            policies: vec![ObjectKey::new("default", "p")],
            rules: vec![],
            allowed,
            log_allowed: false,
        })
    }

    fn pod(
        name: &str,
        ips: &[&str],
        ingress: Option<Allowed>,
        egress: Option<Allowed>,
    ) -> Endpoint {
        Endpoint {
            pod: ObjectKey::new("default", name),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            // A policy per pod: each has sets of its own, as pods of different apps do.
            ingress: ingress.map(|a| iso_of(name, a)),
            egress: egress.map(|a| iso_of(name, a)),
            audit: false,
            cluster_ingress: Default::default(),
            cluster_egress: Default::default(),
        }
    }

    fn ruleset(pods: Vec<Endpoint>) -> Ruleset {
        ruleset_with(pods, Options::default())
    }

    fn ruleset_with(pods: Vec<Endpoint>, options: Options) -> Ruleset {
        let plan = NodePlan {
            endpoints: pods.into_iter().map(|e| (e.pod.clone(), e)).collect(),
            skipped: BTreeMap::new(),
        };
        Ruleset::build(&plan, options)
    }

    fn base() -> Vec<Endpoint> {
        vec![
            pod(
                "api",
                &["10.244.0.10", "fd00::10"],
                Some(allowed(&["10.1.0.0/16"], &["10.2.0.0/16", "fd00:2::/64"])),
                None,
            ),
            pod(
                "web",
                &["10.244.0.11"],
                Some(allowed(&[], &["0.0.0.0/0"])),
                Some(allowed(&["10.244.0.10/32"], &[])),
            ),
            pod("db", &["10.244.0.12"], Some(Allowed::default()), None),
        ]
    }

    /// Diffs `old` to `new`, runs the batch on the model of `old`, and checks it ends in the
    /// model of `new`. Returns the messages, in order.
    fn converge(old: &Ruleset, new: &Ruleset) -> Vec<String> {
        let tx = diff(old, new, true)
            .unwrap()
            .expect("a diff, not a full replace");
        let mut model = Model::of(old);
        let labels = model.run(&tx);
        assert_eq!(model, Model::of(new), "after:\n{}", labels.join("\n"));
        labels
    }

    fn position(labels: &[String], pred: impl Fn(&str) -> bool) -> usize {
        labels
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("no such message in:\n{}", labels.join("\n")))
    }

    #[test]
    fn full_replace_builds_every_object_in_a_valid_order() {
        let rs = ruleset_with(
            base(),
            Options {
                default_deny_unknown: true,
                police_node_traffic: true,
                nflog_group: Some(5),
                ..Options::default()
            },
        );
        let tx = full(&rs, true).unwrap();
        // Whatever the kernel held before: the replace starts from an empty table.
        let mut model = Model::of(&ruleset(vec![]));
        model.run(&tx);
        assert_eq!(model, Model::of(&rs));
    }

    #[test]
    fn diff_of_a_new_pod_creates_sets_then_chain_then_map_entries() {
        let old = ruleset(base());
        let mut pods = base();
        pods.push(pod(
            "new",
            &["10.244.0.20"],
            Some(allowed(&["10.9.0.0/16"], &[])),
            None,
        ));
        let new = ruleset(pods);
        let labels = converge(&old, &new);
        let chain = &new
            .pods
            .values()
            .find(|p| p.chain.name.contains("new"))
            .unwrap()
            .chain
            .name;
        // Its policy is its own: its sets are new shared sets.
        let sets: Vec<&String> = new
            .shared_sets
            .keys()
            .filter(|n| !old.shared_sets.contains_key(*n))
            .collect();
        assert_eq!(sets.len(), 2, "{sets:?}");
        let add_chain = position(&labels, |l| l == format!("add chain {chain}"));
        let add_entry = position(&labels, |l| l.ends_with(&format!(": jump {chain}")));
        for set in &sets {
            let add_set = position(&labels, |l| l == format!("add set {set}"));
            assert!(add_set < add_chain && add_chain < add_entry);
        }
        // Nothing else is touched.
        assert!(
            labels
                .iter()
                .all(|l| l.contains(&chain[..]) || sets.iter().any(|s| l.contains(&s[..])))
        );
    }

    #[test]
    fn diff_of_a_removed_pod_removes_map_entries_then_chain_then_sets() {
        let old = ruleset(base());
        let new = ruleset(base().into_iter().filter(|p| p.pod.name != "api").collect());
        let labels = converge(&old, &new);
        let gone = &old
            .pods
            .values()
            .find(|p| p.chain.name.contains("api"))
            .unwrap();
        let chain = &gone.chain.name;
        let del_entry = position(&labels, |l| {
            l.starts_with("delete map ") && l.ends_with(&format!(": jump {chain}"))
        });
        let del_chain = position(&labels, |l| l == format!("delete chain {chain}"));
        for set in &gone.sets {
            let del_set = position(&labels, |l| l == format!("delete set {}", set.name));
            assert!(del_chain < del_set, "the chain's rules use {}", set.name);
        }
        assert!(del_entry < del_chain);
        // A deleted set takes its elements along: no element message for it.
        for set in &gone.sets {
            assert!(
                !labels
                    .iter()
                    .any(|l| l.contains(&format!("set {} element", set.name)))
            );
        }
    }

    #[test]
    fn diff_of_changed_allowed_peers_deletes_elements_before_adding() {
        // Many peers, few of them changed: deleting elements is cheaper than rebuilding.
        let peers = |changed: &str| -> Allowed {
            let mut nets: Vec<String> = (0..100).map(|i| format!("10.1.{}.0/24", 2 * i)).collect();
            nets[0] = changed.to_string();
            let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
            allowed(&refs, &["fd00:2::/64"])
        };
        let mut pods = base();
        pods[0].ingress = Some(iso(peers("10.7.0.0/16")));
        let old = ruleset(pods.clone());
        pods[0].ingress = Some(iso(peers("10.8.0.0/16")));
        let new = ruleset(pods);
        let labels = converge(&old, &new);
        assert_eq!(labels.len(), 2, "{labels:#?}");
        assert!(
            labels.iter().all(|l| l.contains(" element ")),
            "{labels:#?}"
        );
        let mut seen_add: BTreeSet<&str> = BTreeSet::new();
        for l in &labels {
            let set = l.split(' ').nth(2).unwrap();
            if l.starts_with("add ") {
                seen_add.insert(set);
            } else {
                assert!(!seen_add.contains(set), "delete after add in {set}: {l}");
            }
        }
    }

    #[test]
    fn diff_of_a_moved_address_retargets_the_map_entry() {
        let old = ruleset(base());
        let mut pods = base();
        // The address of `db` now belongs to `web`.
        pods[2].ips = vec!["10.244.0.13".parse().unwrap()];
        pods[1].ips.push("10.244.0.12".parse().unwrap());
        let new = ruleset(pods);
        let labels = converge(&old, &new);
        let del = position(&labels, |l| {
            l.starts_with("delete map ingress_v4 element 10.244.0.12 ")
        });
        let add = position(&labels, |l| {
            l.starts_with("add map ingress_v4 element 10.244.0.12 ")
        });
        assert!(del < add);
    }

    #[test]
    fn diff_of_a_changed_chain_rebuilds_the_pod() {
        let logs = Options {
            nflog_group: Some(5),
            ..Options::default()
        };
        let old = ruleset_with(base(), logs);
        let mut pods = base();
        // Logging changes the rules of the chain: it is deleted and created again.
        std::sync::Arc::make_mut(pods[1].egress.as_mut().unwrap()).log_allowed = true;
        let new = ruleset_with(pods, logs);
        assert_ne!(old, new);
        let labels = converge(&old, &new);
        let del_chain = position(&labels, |l| l == "delete chain egr/default/web");
        let add_chain = position(&labels, |l| l == "add chain egr/default/web");
        assert!(del_chain < add_chain);
    }

    /// `n` pods of one app: the same policy, the same allowed peers.
    fn replicas(n: usize, peers: &[&str]) -> Vec<Endpoint> {
        let shared = iso_of("app", allowed(&[], peers));
        (0..n)
            .map(|i| {
                let mut e = pod(
                    &format!("r{i}"),
                    &[&format!("10.244.1.{}", i + 1)],
                    None,
                    None,
                );
                e.ingress = Some(shared.clone());
                e
            })
            .collect()
    }

    fn sets_used(rs: &Ruleset, pod: &str) -> Vec<String> {
        let chain = &rs.pods[&format!("ing/default/{pod}")].chain;
        chain
            .rules
            .iter()
            .filter_map(|r| r.network_policy_set().map(str::to_string))
            .collect()
    }

    /// 100 /24 networks in 10.`third`.0.0/16: a change from one to another is a mass change.
    fn many_nets(third: u8) -> Vec<String> {
        (0..100)
            .map(|i| format!("10.{third}.{}.0/24", 2 * i))
            .collect()
    }

    #[test]
    fn pods_the_same_policies_isolate_share_their_sets() {
        let rs = ruleset(replicas(3, &["10.9.0.0/16"]));
        assert_eq!(rs.shared_sets.len(), 2, "{:?}", rs.shared_sets.keys());
        assert!(rs.pods.values().all(|p| p.sets.is_empty()));
        assert_eq!(sets_used(&rs, "r0"), sets_used(&rs, "r2"));
        assert!(
            sets_used(&rs, "r0")
                .iter()
                .all(|s| rs.shared_sets.contains_key(s))
        );
        assert_eq!(
            rs.element_count(),
            1 + 3,
            "one copy of the peers, three map entries"
        );
    }

    #[test]
    fn a_pod_the_same_policies_allow_otherwise_gets_sets_of_its_own() {
        let mut pods = replicas(2, &["10.9.0.0/16"]);
        // As an ingress named port its containers number differently would.
        pods[1].ingress = Some(iso_of("app", allowed(&[], &["10.8.0.0/16"])));
        let rs = ruleset(pods);
        assert_ne!(sets_used(&rs, "r0"), sets_used(&rs, "r1"));
        assert_eq!(rs.pods["ing/default/r1"].sets.len(), 2);
        for set in sets_used(&rs, "r1") {
            assert!(set.ends_with("/default/r1"), "{set}");
        }
        // And both converge either way.
        let shared = ruleset(replicas(2, &["10.9.0.0/16"]));
        converge(&shared, &rs);
        converge(&rs, &shared);
    }

    #[test]
    fn diff_of_shared_sets_changes_their_elements_once() {
        let old = ruleset(replicas(3, &["10.9.0.0/16"]));
        let new = ruleset(replicas(3, &["10.9.0.0/16", "10.7.0.0/16"]));
        let labels = converge(&old, &new);
        let adds: Vec<&String> = labels
            .iter()
            .filter(|l| l.contains(" element 10.7.0.0/16"))
            .collect();
        assert_eq!(adds.len(), 1, "{labels:#?}");
        assert!(!labels.iter().any(|l| l.contains("chain")), "{labels:#?}");
    }

    #[test]
    fn diff_of_a_mass_change_in_shared_sets_rebuilds_them_with_their_chains() {
        let with = |nets: &[String]| {
            let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
            ruleset(replicas(3, &refs))
        };
        let (old, new) = (with(&many_nets(50)), with(&many_nets(60)));
        let labels = converge(&old, &new);
        assert!(
            !labels
                .iter()
                .any(|l| l.starts_with("delete set ") && l.contains(" element ")),
            "{labels:#?}"
        );
        for r in ["r0", "r1", "r2"] {
            position(&labels, |l| l == format!("delete chain ing/default/{r}"));
        }
    }

    #[test]
    fn diff_of_a_pod_that_other_policies_isolate_moves_it_to_their_sets() {
        let old = ruleset(replicas(2, &["10.9.0.0/16"]));
        let mut pods = replicas(2, &["10.9.0.0/16"]);
        pods[1].ingress = Some(iso_of("other", allowed(&[], &["10.9.0.0/16"])));
        let new = ruleset(pods);
        assert_ne!(sets_used(&new, "r0"), sets_used(&new, "r1"));
        let labels = converge(&old, &new);
        position(&labels, |l| l == "delete chain ing/default/r1");
        assert!(
            !labels.iter().any(|l| l.contains("ing/default/r0")),
            "{labels:#?}"
        );
    }

    #[test]
    fn diff_of_a_mass_change_rebuilds_the_sets_instead_of_deleting_elements() {
        let with = |nets: &[String]| {
            let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
            let mut pods = base();
            pods[0].ingress = Some(iso(allowed(&[], &refs)));
            ruleset(pods)
        };
        let (a, b) = (many_nets(50), many_nets(60));
        let old = with(&a);
        let new = with(&b);
        let labels = converge(&old, &new);
        assert!(
            !labels
                .iter()
                .any(|l| l.starts_with("delete set ") && l.contains(" element "))
        );
        position(&labels, |l| l.starts_with("delete chain "));
    }

    #[test]
    fn diff_of_unknown_address_sets_updates_their_elements() {
        let options = Options {
            default_deny_unknown: true,
            ..Options::default()
        };
        let cidrs: Vec<ipnet::IpNet> = vec!["10.244.0.0/24".parse().unwrap()];
        let build = |known: &[&str]| {
            let mut rs = ruleset_with(base(), options);
            rs.guard_unknown(&cidrs, known.iter().map(|s| s.parse().unwrap()));
            rs
        };
        let old = build(&["10.244.0.10", "10.244.0.11"]);
        let new = build(&["10.244.0.10", "10.244.0.12"]);
        let labels = converge(&old, &new);
        assert!(
            labels.iter().all(|l| l.contains("unknown_v4")),
            "{labels:#?}"
        );
    }

    #[test]
    fn diff_of_everything_at_once_converges() {
        let old = ruleset(base());
        // Same address families per pod (else the pod's sets change shape and diff gives up).
        let new = ruleset(vec![
            pod(
                "api",
                &["10.244.0.10", "fd00::10"],
                Some(allowed(&["10.1.0.0/16", "10.3.0.0/16"], &[])),
                Some(Allowed::default()),
            ),
            pod("db", &["10.244.0.13"], Some(Allowed::default()), None),
            pod(
                "cache",
                &["10.244.0.12", "fd00::12"],
                None,
                Some(allowed(&["::/0"], &[])),
            ),
        ]);
        converge(&old, &new);
        converge(&new, &old);
    }

    #[test]
    fn diff_gives_up_when_the_shape_changes() {
        let old = ruleset(base());
        let new = ruleset_with(
            base(),
            Options {
                police_node_traffic: true,
                ..Options::default()
            },
        );
        assert!(diff(&old, &new, false).unwrap().is_none());
    }

    #[test]
    fn one_message_per_element_only_when_asked() {
        let old = ruleset(base());
        let mut pods = base();
        pods[0].ingress = Some(iso(allowed(
            &["10.1.0.0/16", "10.5.0.1/32", "10.6.0.1/32"],
            &[],
        )));
        let new = ruleset(pods);
        let grouped = diff(&old, &new, false).unwrap().unwrap();
        let single = diff(&old, &new, true).unwrap().unwrap();
        assert!(grouped.messages() < single.messages());
        assert!(
            grouped
                .labels()
                .as_slice()
                .iter()
                .any(|l| l.contains(" more"))
        );
    }

    /// A pod from a few bits: which of 4 names, which of 3 IPv4 addresses, and for each
    /// direction whether it is isolated, which of 4 peer networks it allows and whether it logs.
    fn arbitrary_pod(bits: (u8, u8, u8, u8, bool)) -> Endpoint {
        let (name, ip, ingress, egress, log) = bits;
        let peers = |mask: u8| -> Option<Allowed> {
            (mask & 0x10 != 0).then(|| {
                let nets = ["10.1.0.0/16", "10.2.0.5/32", "10.3.0.0/24", "10.4.0.0/15"];
                let chosen: Vec<&str> = (0..4)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| nets[i])
                    .collect();
                allowed(&chosen[..chosen.len() / 2], &chosen[chosen.len() / 2..])
            })
        };
        let mut e = pod(
            &format!("p{}", name % 4),
            &[&format!("10.244.0.{}", 10 + ip % 3)],
            peers(ingress),
            peers(egress),
        );
        for iso in [e.ingress.as_mut(), e.egress.as_mut()]
            .into_iter()
            .flatten()
        {
            std::sync::Arc::make_mut(iso).log_allowed = log;
        }
        e
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any diff the kernel would accept message by message, ending in the new ruleset.
        #[test]
        fn every_diff_is_valid_in_order_and_converges(
            old in proptest::collection::vec(proptest::prelude::any::<(u8, u8, u8, u8, bool)>(), 0..5),
            new in proptest::collection::vec(proptest::prelude::any::<(u8, u8, u8, u8, bool)>(), 0..5),
        ) {
            let options = Options { nflog_group: Some(5), ..Options::default() };
            let old = ruleset_with(old.into_iter().map(arbitrary_pod).collect(), options);
            let new = ruleset_with(new.into_iter().map(arbitrary_pod).collect(), options);
            if let Some(tx) = diff(&old, &new, true).unwrap() {
                let mut model = Model::of(&old);
                model.run(&tx);
                proptest::prop_assert_eq!(model, Model::of(&new));
            }
        }
    }
}
