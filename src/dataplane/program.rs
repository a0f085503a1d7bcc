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
    AddrField, Chain, Element, Family, Hook, LOG_BURST, LOG_RATE_PER_SECOND, LogTo, NamedSet,
    PodDirection, Rule, Ruleset, SetKind, TABLE, VerdictMap,
};
use super::sys::{
    self, ELEM_INTERVAL_END, LookupExt, MetaLoad, NFT_SET_CONCAT, NFT_SET_INTERVAL, NFT_SET_MAP,
    PayloadLoad, RawElem, SetSpec, dtype,
};

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

/// The kernel elements of one set element: an rbtree range is a start element plus an
/// interval-end element at `hi + 1` (none when `hi` is the last address); a pipapo range is
/// one element with `key_end`.
pub fn raw_elements(element: &Element) -> Vec<RawElem> {
    match element {
        Element::Addr(r) => {
            let mut v = vec![RawElem {
                key: addr_bytes(&r.lo),
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
        Element::Tuple {
            addrs,
            protocol,
            ports: (lo, hi),
        } => vec![RawElem {
            key: tuple_key(&addrs.lo, protocol.number(), *lo),
            key_end: Some(tuple_key(&addrs.hi, protocol.number(), *hi)),
            ..Default::default()
        }],
    }
}

pub fn raw_map_entry(ip: &IpAddr, chain: &str) -> Result<RawElem, BadName> {
    Ok(RawElem {
        key: addr_bytes(ip),
        jump: Some(cname(chain)?),
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
        SetKind::AddrProtoPort => SetSpec {
            key_type: dtype::concat(&[addr_type, dtype::INET_PROTOCOL, dtype::INET_SERVICE]),
            key_len: u32::from(addr_len) + 4 + 4,
            flags: NFT_SET_INTERVAL | NFT_SET_CONCAT,
            concat: vec![addr_len, 1, 2],
            verdict_map: false,
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
        let spec = set_spec(set);
        self.set_object(&set.name, &spec, MsgType::Add, "set")?;
        let groups: Vec<(String, Vec<RawElem>)> = set
            .elements
            .iter()
            .map(|e| (element_text(e), raw_elements(e)))
            .collect();
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
        let groups: Vec<(String, Vec<RawElem>)> = elements
            .iter()
            .map(|e| (element_text(e), raw_elements(e)))
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
            jump: None,
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
fn addr_lookup(
    r: &mut NftRule,
    family: Family,
    field: AddrField,
    set: &str,
    dreg: Option<u32>,
) -> Result<(), BadName> {
    nfproto(r, family);
    r.add_expr(&PayloadLoad::addr(
        family == Family::V6,
        field == AddrField::Daddr,
        sys::REG1,
    ));
    r.add_expr(&LookupExt {
        set: cname(set)?,
        set_id: 0,
        dreg,
    });
    Ok(())
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
        Rule::TcpNewNotSynDrop => {
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
            addr_lookup(r, *family, *field, map, Some(sys::REG_VERDICT))?;
        }
        Rule::AddrReturn {
            family,
            field,
            set,
            log,
        } => {
            addr_lookup(r, *family, *field, set, None)?;
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
            nfproto(r, *family);
            // Fields go to consecutive 32-bit registers: address (1 or 4 of them), protocol, port.
            let addr_regs = match family {
                Family::V4 => 1,
                Family::V6 => 4,
            };
            r.add_expr(&PayloadLoad::addr(
                *family == Family::V6,
                *field == AddrField::Daddr,
                sys::REG1,
            ));
            r.add_expr(&MetaLoad::l4proto(sys::reg32(addr_regs)));
            r.add_expr(&PayloadLoad::th_dport(sys::reg32(addr_regs + 1)));
            r.add_expr(&LookupExt {
                set: cname(set)?,
                set_id: 0,
                dreg: None,
            });
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
            addr_lookup(r, *family, *field, set, None)?;
            r.add_expr(&Verdict::Drop);
        }
    }
    Ok(())
}

/// The whole ruleset as one transaction replacing the table.
pub fn full(ruleset: &Ruleset, per_element: bool) -> Result<Tx, BadName> {
    let mut tx = Tx::new(per_element);
    tx.replace_table();
    add_contents(&mut tx, ruleset)?;
    Ok(tx)
}

fn add_contents(tx: &mut Tx, ruleset: &Ruleset) -> Result<(), BadName> {
    for set in &ruleset.unknown {
        tx.add_set(set)?;
    }
    for pod in ruleset.pods.values() {
        tx.add_pod_objects(pod)?;
    }
    for map in &ruleset.maps {
        tx.add_map(map)?;
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

/// Whether replacing a pod direction's sets outright is cheaper than deleting the elements
/// that left them.
fn cheaper_to_rebuild(old: &PodDirection, new: &PodDirection) -> bool {
    let mut deletes = 0;
    let mut total = 0;
    for (os, ns) in old.sets.iter().zip(&new.sets) {
        total += ns.elements.len();
        if os.elements != ns.elements {
            deletes += element_diff(os, ns).0.len();
        }
    }
    deletes * DELETE_COST > total + DELETE_COST
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
        || old.unknown.len() != new.unknown.len()
        || old
            .unknown
            .iter()
            .zip(&new.unknown)
            .any(|(a, b)| a.name != b.name || a.family != b.family)
    {
        return Ok(None);
    }
    for (name, o) in &old.pods {
        if let Some(n) = new.pods.get(name) {
            let same_sets = o.sets.len() == n.sets.len()
                && o.sets
                    .iter()
                    .zip(&n.sets)
                    .all(|(a, b)| a.name == b.name && a.family == b.family && a.kind == b.kind);
            if !same_sets {
                return Ok(None);
            }
        }
    }
    // Pod directions whose element deletions would cost more than re-adding their sets are
    // taken out (map entries, chain, sets) and put back, in the same transaction.
    let rebuilt: BTreeSet<&String> = new
        .pods
        .iter()
        .filter(|(name, n)| {
            // A chain whose rules changed (audit mode switched, logging asked for) is rebuilt
            // whole: its rules have no stable handles to replace them by.
            old.pods
                .get(*name)
                .is_some_and(|o| o.chain != n.chain || cheaper_to_rebuild(o, n))
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
    // 3. Changed pods and unknown-address sets: element deletes before adds, so a replaced
    // interval never overlaps.
    for (os, ns) in old.unknown.iter().zip(&new.unknown) {
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
    // 4. New (and rebuilt) pods: sets, then chains.
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

/// The expression text of every rule of `ruleset`, by chain, in the format
/// [`sys::rule_text`] gives dumped rules: the rules are built and parsed back locally.
pub fn expected_rule_texts(ruleset: &Ruleset) -> Result<BTreeMap<String, Vec<String>>, BadName> {
    let table = Table::new(c"nftpol", FAMILY);
    let mut out = BTreeMap::new();
    let chains = ruleset
        .pods
        .values()
        .map(|p| &p.chain)
        .chain(&ruleset.base_chains);
    for chain in chains {
        let n = cname(&chain.name)?;
        let c = NftChain::new(&n, &table);
        let mut texts = Vec::new();
        for rule in &chain.rules {
            let mut r = NftRule::new(&c);
            rule_exprs(&mut r, rule)?;
            let bytes = sys::nlmsg_bytes(&r);
            // SAFETY: `bytes` is one complete message written by nftnl.
            if let Some((_, text)) = unsafe { sys::rule_text(bytes.as_ptr().cast()) } {
                texts.push(text);
            }
        }
        out.insert(chain.name.clone(), texts);
    }
    Ok(out)
}

/// The raw elements the kernel should hold for every set and map of `ruleset`, by name.
pub fn expected_elements(ruleset: &Ruleset) -> Result<Vec<(String, Vec<RawElem>)>, BadName> {
    let mut out = Vec::new();
    for set in ruleset.sets() {
        let mut v: Vec<RawElem> = set.elements.iter().flat_map(raw_elements).collect();
        v.sort();
        out.push((set.name.clone(), v));
    }
    for map in &ruleset.maps {
        let mut v = Vec::new();
        for (ip, chain) in &map.entries {
            v.push(raw_map_entry(ip, chain)?);
        }
        v.sort();
        out.push((map.name.clone(), v));
    }
    Ok(out)
}
