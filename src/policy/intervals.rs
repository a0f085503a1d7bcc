//! Address and port interval sets: the normal form the compiler emits.
//!
//! nftables interval sets reject overlapping elements (the whole batch aborts), so every set of
//! allowed peers is kept here as sorted, disjoint, non-adjacent inclusive ranges. `Allowed` is the
//! union of what one pod allows in one direction, partitioned so that its port blocks never
//! overlap either: each (address range, protocol, port range) element it yields is disjoint from
//! every other one.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::model::Protocol;

/// Sorted, disjoint, non-adjacent inclusive ranges of one address family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ranges<T> {
    ranges: Vec<(T, T)>,
}

/// The operations `Ranges` needs from an address type (u32 for IPv4, u128 for IPv6).
pub trait Bound: Copy + Ord {
    const MIN: Self;
    const MAX: Self;
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
}

macro_rules! bound {
    ($t:ty) => {
        impl Bound for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            fn succ(self) -> Option<Self> {
                self.checked_add(1)
            }
            fn pred(self) -> Option<Self> {
                self.checked_sub(1)
            }
        }
    };
}
bound!(u32);
bound!(u128);
bound!(u16);

impl<T: Bound> Ranges<T> {
    pub fn new() -> Self {
        Self { ranges: Vec::new() }
    }

    pub fn full() -> Self {
        Self {
            ranges: vec![(T::MIN, T::MAX)],
        }
    }

    /// Normalises arbitrary (possibly overlapping, unordered) inclusive ranges.
    pub fn from_ranges(mut ranges: Vec<(T, T)>) -> Self {
        ranges.retain(|(lo, hi)| lo <= hi);
        ranges.sort_unstable();
        let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            if let Some(last) = out.last_mut() {
                // Merge overlapping and adjacent ranges: nft would store them as two elements.
                if last.1.succ().is_none_or(|next| lo <= next) {
                    if hi > last.1 {
                        last.1 = hi;
                    }
                    continue;
                }
            }
            out.push((lo, hi));
        }
        Self { ranges: out }
    }

    pub fn ranges(&self) -> &[(T, T)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, v: T) -> bool {
        let i = self.ranges.partition_point(|(_, hi)| *hi < v);
        self.ranges.get(i).is_some_and(|(lo, _)| *lo <= v)
    }

    pub fn union(&self, other: &Self) -> Self {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        Self::from_ranges(all)
    }

    pub fn subtract(&self, other: &Self) -> Self {
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut j = 0;
        for &(lo, hi) in &self.ranges {
            let mut cur = Some(lo);
            while j < other.ranges.len() && other.ranges[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            while let Some(start) = cur {
                match other.ranges.get(k) {
                    Some(&(olo, ohi)) if olo <= hi => {
                        if olo > start {
                            // olo > start >= MIN, so pred exists.
                            out.push((start, olo.pred().unwrap_or(start)));
                        }
                        cur = if ohi >= hi { None } else { ohi.succ() };
                        k += 1;
                    }
                    _ => {
                        out.push((start, hi));
                        cur = None;
                    }
                }
            }
        }
        Self { ranges: out }
    }
}

/// A set of IPv4 and IPv6 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrSet {
    pub v4: Ranges<u32>,
    pub v6: Ranges<u128>,
}

fn v4_range(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

fn v6_range(net: &Ipv6Net) -> (u128, u128) {
    (u128::from(net.network()), u128::from(net.broadcast()))
}

impl AddrSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        Self {
            v4: Ranges::full(),
            v6: Ranges::full(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Builds a set from networks and single addresses in one normalisation pass.
    pub fn from_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push(v4_range(n)),
                IpNet::V6(n) => v6.push(v6_range(n)),
            }
        }
        Self {
            v4: Ranges::from_ranges(v4),
            v6: Ranges::from_ranges(v6),
        }
    }

    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for a in addrs {
            match a {
                IpAddr::V4(a) => v4.push((u32::from(a), u32::from(a))),
                IpAddr::V6(a) => v6.push((u128::from(a), u128::from(a))),
            }
        }
        Self {
            v4: Ranges::from_ranges(v4),
            v6: Ranges::from_ranges(v6),
        }
    }

    /// `cidr` minus every `except` (ipBlock semantics).
    pub fn from_ip_block(cidr: &IpNet, except: &[IpNet]) -> Self {
        Self::from_nets([cidr]).subtract(&Self::from_nets(except))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }

    pub fn union(&self, other: &Self) -> Self {
        Self {
            v4: self.v4.union(&other.v4),
            v6: self.v6.union(&other.v6),
        }
    }

    pub fn subtract(&self, other: &Self) -> Self {
        Self {
            v4: self.v4.subtract(&other.v4),
            v6: self.v6.subtract(&other.v6),
        }
    }

    /// Unions many sets with one normalisation pass (cheaper than folding `union`).
    pub fn union_all<'a>(sets: impl IntoIterator<Item = &'a AddrSet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for s in sets {
            v4.extend_from_slice(s.v4.ranges());
            v6.extend_from_slice(s.v6.ranges());
        }
        Self {
            v4: Ranges::from_ranges(v4),
            v6: Ranges::from_ranges(v6),
        }
    }

    pub fn v4_ranges(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.v4
            .ranges()
            .iter()
            .map(|&(lo, hi)| (Ipv4Addr::from(lo), Ipv4Addr::from(hi)))
    }

    pub fn v6_ranges(&self) -> impl Iterator<Item = (Ipv6Addr, Ipv6Addr)> + '_ {
        self.v6
            .ranges()
            .iter()
            .map(|&(lo, hi)| (Ipv6Addr::from(lo), Ipv6Addr::from(hi)))
    }

    /// Number of ranges (what becomes interval set elements).
    pub fn len(&self) -> usize {
        self.v4.ranges().len() + self.v6.ranges().len()
    }
}

/// Addresses allowed on one port range of one protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortBlock {
    pub lo: u16,
    pub hi: u16,
    pub addrs: AddrSet,
}

/// What one endpoint allows in one direction, in normal form: addresses allowed on every port
/// and protocol, and per protocol disjoint port blocks each with its addresses.
///
/// Build it with [`AllowedBuilder`]; the normal form makes equality meaningful, so two
/// `Allowed` values are equal exactly when they allow the same traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Allowed {
    pub any_port: AddrSet,
    pub ports: BTreeMap<Protocol, Vec<PortBlock>>,
}

impl Allowed {
    pub fn allows(&self, addr: IpAddr, protocol: Protocol, port: u16) -> bool {
        if self.any_port.contains(addr) {
            return true;
        }
        self.ports.get(&protocol).is_some_and(|blocks| {
            let i = blocks.partition_point(|b| b.hi < port);
            blocks
                .get(i)
                .is_some_and(|b| b.lo <= port && b.addrs.contains(addr))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.any_port.is_empty() && self.ports.is_empty()
    }

    pub fn union_all<'a>(parts: impl IntoIterator<Item = &'a Allowed>) -> Allowed {
        let mut b = AllowedBuilder::default();
        for p in parts {
            b.any_port.push(p.any_port.clone());
            for (proto, blocks) in &p.ports {
                for blk in blocks {
                    b.add_ports(*proto, blk.lo, blk.hi, blk.addrs.clone());
                }
            }
        }
        b.finish()
    }

    /// Number of (address range, protocol, port range) elements for the port sets.
    pub fn port_elements(&self) -> usize {
        self.ports
            .values()
            .flat_map(|blocks| blocks.iter().map(|b| b.addrs.len()))
            .sum()
    }
}

/// Accumulates allowed traffic in any order and overlap, then normalises it once.
#[derive(Clone, Debug, Default)]
pub struct AllowedBuilder {
    any_port: Vec<AddrSet>,
    ports: BTreeMap<Protocol, Vec<PortBlock>>,
}

impl AllowedBuilder {
    pub fn add_any_port(&mut self, addrs: AddrSet) {
        if !addrs.is_empty() {
            self.any_port.push(addrs);
        }
    }

    pub fn add_ports(&mut self, protocol: Protocol, lo: u16, hi: u16, addrs: AddrSet) {
        if !addrs.is_empty() && lo <= hi {
            self.ports
                .entry(protocol)
                .or_default()
                .push(PortBlock { lo, hi, addrs });
        }
    }

    pub fn finish(self) -> Allowed {
        let any_port = AddrSet::union_all(&self.any_port);
        let ports = self
            .ports
            .into_iter()
            .map(|(proto, blocks)| (proto, partition(blocks, &any_port)))
            .filter(|(_, blocks)| !blocks.is_empty())
            .collect();
        Allowed { any_port, ports }
    }
}

/// Splits possibly overlapping port blocks into disjoint ones at every range boundary, unions the
/// addresses on each piece, drops what `any_port` already allows, and merges neighbours that end
/// up with the same addresses.
fn partition(blocks: Vec<PortBlock>, any_port: &AddrSet) -> Vec<PortBlock> {
    // Boundaries as u32 so that 65535 + 1 is representable.
    let mut cuts: Vec<u32> = blocks
        .iter()
        .flat_map(|b| [b.lo as u32, b.hi as u32 + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<PortBlock> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let covering = blocks
            .iter()
            .filter(|b| (b.lo as u32) <= lo && hi <= b.hi as u32)
            .map(|b| &b.addrs);
        let addrs = AddrSet::union_all(covering).subtract(any_port);
        if addrs.is_empty() {
            continue;
        }
        // Both bounds came from u16 values (hi is at most 65535), so they fit.
        let (lo, hi) = (lo as u16, hi as u16);
        if let Some(last) = out.last_mut()
            && last.hi as u32 + 1 == lo as u32
            && last.addrs == addrs
        {
            last.hi = hi;
            continue;
        }
        out.push(PortBlock { lo, hi, addrs });
    }
    out
}

/// The smallest list of CIDRs covering exactly `[lo, hi]` (for rendering ranges as prefixes).
pub fn range_to_cidrs_v4(lo: u32, hi: u32) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    let mut cur = lo as u64;
    let end = hi as u64;
    while cur <= end {
        let align = if cur == 0 {
            32
        } else {
            cur.trailing_zeros().min(32)
        };
        let mut bits = align;
        while bits > 0 && cur + (1u64 << bits) - 1 > end {
            bits -= 1;
        }
        // bits <= 32, so the prefix length is valid.
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(cur as u32), (32 - bits) as u8) {
            out.push(net);
        }
        cur += 1u64 << bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_merge_overlapping_and_adjacent() {
        let r = Ranges::<u32>::from_ranges(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]);
        assert_eq!(r.ranges(), &[(1, 9), (20, 30)]);
    }

    #[test]
    fn subtract_punches_holes() {
        let all = Ranges::<u32>::from_ranges(vec![(0, 100)]);
        let holes = Ranges::<u32>::from_ranges(vec![(0, 0), (10, 20), (100, 200)]);
        assert_eq!(all.subtract(&holes).ranges(), &[(1, 9), (21, 99)]);
        let full = Ranges::<u32>::full();
        assert_eq!(
            full.subtract(&Ranges::from_ranges(vec![(u32::MAX, u32::MAX)]))
                .ranges(),
            &[(0, u32::MAX - 1)]
        );
    }

    #[test]
    fn ip_block_except() {
        let s = AddrSet::from_ip_block(&net("10.0.0.0/24"), &[net("10.0.0.128/25")]);
        assert!(s.contains("10.0.0.127".parse().unwrap()));
        assert!(!s.contains("10.0.0.128".parse().unwrap()));
        assert!(!s.contains("fd00::1".parse().unwrap()));
    }

    #[test]
    fn overlapping_port_blocks_are_partitioned() {
        let a = AddrSet::from_nets([&net("10.0.0.1/32")]);
        let b = AddrSet::from_nets([&net("10.0.0.2/32")]);
        let mut builder = AllowedBuilder::default();
        builder.add_ports(Protocol::Tcp, 80, 90, a.clone());
        builder.add_ports(Protocol::Tcp, 85, 100, b.clone());
        let allowed = builder.finish();
        let blocks = &allowed.ports[&Protocol::Tcp];
        assert_eq!(
            blocks.iter().map(|b| (b.lo, b.hi)).collect::<Vec<_>>(),
            vec![(80, 84), (85, 90), (91, 100)]
        );
        assert_eq!(blocks[1].addrs, a.union(&b));
    }

    #[test]
    fn cidr_cover() {
        assert_eq!(
            range_to_cidrs_v4(0, u32::MAX),
            vec!["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]
        );
        let c = range_to_cidrs_v4(
            u32::from("10.0.0.1".parse::<Ipv4Addr>().unwrap()),
            u32::from("10.0.0.6".parse::<Ipv4Addr>().unwrap()),
        );
        let s: Vec<String> = c.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            s,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
    }
}
