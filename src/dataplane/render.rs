//! nft text of a [`Ruleset`], byte for byte what `nft list table inet nftpol` prints (nft 1.0.6)
//! once the ruleset is programmed into a fresh table. It is the `nftpol render` output, the debug
//! dump users compare with the kernel, and the oracle of the netlink tests.
//!
//! Two details mirror nft's printer rather than any grammar: nft wraps element lists (two IPv4
//! elements per line, one per line for IPv6 and concatenations) and it lists single-field
//! interval sets and hash maps sorted, concatenated interval sets in kernel (insertion) order.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::ruleset::{
    AddrRange, Chain, Element, Family, Jump, LOG_BURST, LOG_RATE_PER_SECOND, LogTo, NamedSet, Rule,
    Ruleset, SetKind, TABLE, VerdictMap,
};
use crate::policy::model::Protocol;

/// `nft list table inet nftpol` of the programmed ruleset.
pub fn render(ruleset: &Ruleset) -> String {
    let mut blocks: Vec<String> = Vec::new();
    for set in ruleset.sets() {
        blocks.push(set_block(set));
    }
    for map in &ruleset.maps {
        blocks.push(map_block(map));
    }
    for chain in ruleset.chains() {
        blocks.push(chain_block(chain));
    }
    format!("table inet {TABLE} {{\n{}}}\n", blocks.join("\n"))
}

/// A script for `nft -f` that atomically replaces the table with this ruleset.
pub fn render_script(ruleset: &Ruleset) -> String {
    format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        render(ruleset)
    )
}

/// How many elements nft prints per line before wrapping (`calculate_delim` in nft 1.0.6).
fn per_line(family: Family, concat: bool) -> usize {
    match (family, concat) {
        (Family::V4, false) => 2,
        _ => 1,
    }
}

fn elements_line(items: &[String], per_line: usize) -> String {
    let mut out = String::from("\t\telements = { ");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            if i % per_line == 0 {
                out.push_str(",\n\t\t\t     ");
            } else {
                out.push_str(", ");
            }
        }
        out.push_str(item);
    }
    out.push_str(" }\n");
    out
}

fn set_block(set: &NamedSet) -> String {
    let addr = match set.family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let (object, ty, concat) = match set.kind {
        SetKind::Addr | SetKind::Learned => ("set", addr.to_string(), false),
        SetKind::AddrProtoPort => ("set", format!("{addr} . inet_proto . inet_service"), true),
        SetKind::AddrDecide => ("map", format!("{addr} : verdict"), false),
        SetKind::AddrProtoPortDecide => (
            "map",
            format!("{addr} . inet_proto . inet_service : verdict"),
            true,
        ),
    };
    let flags = match set.kind {
        SetKind::Learned => "timeout",
        _ => "interval",
    };
    let mut s = format!(
        "\t{object} {} {{\n\t\ttype {ty}\n\t\tflags {flags}\n",
        set.name
    );
    if !set.elements.is_empty() {
        let mut items: Vec<&Element> = set.elements.iter().collect();
        if !concat {
            // nft decomposes rbtree intervals in address order.
            items.sort();
        }
        let items: Vec<String> = items.into_iter().map(element_text).collect();
        s.push_str(&elements_line(&items, per_line(set.family, concat)));
    }
    s.push_str("\t}\n");
    s
}

fn map_block(map: &VerdictMap) -> String {
    let ty = match map.family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let mut s = format!("\tmap {} {{\n\t\ttype {ty} : verdict\n", map.name);
    if !map.entries.is_empty() {
        // BTreeMap order is numeric address order, which is how nft sorts hash elements.
        let items: Vec<String> = map
            .entries
            .iter()
            .map(|(ip, chain)| format!("{ip} : jump {chain}"))
            .collect();
        s.push_str(&elements_line(&items, per_line(map.family, false)));
    }
    s.push_str("\t}\n");
    s
}

fn chain_block(chain: &Chain) -> String {
    let mut s = format!("\tchain {} {{\n", chain.name);
    if let Some(hook) = chain.hook {
        let _ = writeln!(
            s,
            "\t\ttype filter hook {} priority filter; policy accept;",
            hook.keyword()
        );
    }
    for rule in &chain.rules {
        let _ = writeln!(s, "\t\t{}", rule_text(rule));
    }
    s.push_str("\t}\n");
    s
}

/// One rule as nft prints it (counters as freshly created: zero).
pub fn rule_text(rule: &Rule) -> String {
    match rule {
        Rule::CtEstablishedAccept => "ct state established,related accept".into(),
        Rule::CtInvalidDrop => "ct state invalid drop".into(),
        Rule::TcpNewNotSynDrop { family, field, set } => format!(
            "{} {} @{set} tcp flags != syn / syn,ack ct state new drop",
            family.keyword(),
            field.keyword()
        ),
        Rule::NeighborDiscoveryAccept(t) => format!("icmpv6 type {} accept", t.keyword()),
        Rule::Vmap { family, field, map } => {
            format!("{} {} vmap @{map}", family.keyword(), field.keyword())
        }
        Rule::AddrReturn {
            family,
            field,
            set,
            log,
        } => format!(
            "{} {} @{set}{} return",
            family.keyword(),
            field.keyword(),
            log_text(log)
        ),
        Rule::TupleReturn {
            family,
            field,
            set,
            log,
        } => format!(
            "{} {} . meta l4proto . th dport @{set}{} return",
            family.keyword(),
            field.keyword(),
            log_text(log)
        ),
        Rule::LimitedLog(to) => format!(
            "limit rate {LOG_RATE_PER_SECOND}/second burst {LOG_BURST} packets{}",
            log_text(&Some(to.clone()))
        ),
        Rule::CounterDrop => "counter packets 0 bytes 0 drop".into(),
        Rule::CounterReturn => "counter packets 0 bytes 0 return".into(),
        Rule::AddrDrop { family, field, set } => {
            format!("{} {} @{set} drop", family.keyword(), field.keyword())
        }
        Rule::DecideTuple { family, field, map } => format!(
            "{} {} . meta l4proto . th dport vmap @{map}",
            family.keyword(),
            field.keyword()
        ),
        Rule::DecideOther { family, field, map } => format!(
            "meta l4proto != tcp meta l4proto != udp meta l4proto != sctp {} {} vmap @{map}",
            family.keyword(),
            field.keyword()
        ),
        Rule::DnsHold {
            family,
            protocol,
            set,
            queue,
        } => format!(
            "{} daddr @{set} {} sport 53 queue num {queue} bypass",
            family.keyword(),
            protocol.as_str().to_lowercase()
        ),
        Rule::LearnedVerdict {
            family,
            field,
            guard,
            set,
            ports,
            log,
            verdict,
        } => {
            let (fam, fld) = (family.keyword(), field.keyword());
            let guard = match guard {
                None => String::new(),
                Some(g) => {
                    let mut t = format!("{fam} {fld} . meta l4proto . th dport != @{} ", g.tuple);
                    if let Some(other) = &g.other {
                        t.push_str(&format!("{fam} {fld} != @{other} "));
                    }
                    t
                }
            };
            let ports = match ports {
                None => String::new(),
                Some((p, lo, hi)) if lo == hi => {
                    format!(" {} dport {lo}", p.as_str().to_lowercase())
                }
                // nft folds the `>=` and `<=` comparisons into a range when listing.
                Some((p, lo, hi)) => format!(" {} dport {lo}-{hi}", p.as_str().to_lowercase()),
            };
            format!(
                "{guard}{fam} {fld} @{set}{ports}{} {}",
                log_text(log),
                jump_text(verdict)
            )
        }
    }
}

fn jump_text(j: &Jump) -> String {
    match j {
        Jump::Return => "return".into(),
        Jump::Goto(chain) => format!("goto {chain}"),
    }
}

fn log_text(log: &Option<LogTo>) -> String {
    log.as_ref()
        .map(|to| format!(" log prefix \"{}\" group {}", to.prefix, to.group))
        .unwrap_or_default()
}

/// An element as nft prints it: `10.0.0.0/8`, `10.0.0.1-10.0.0.5`, `10.1.2.3 . tcp . 80-81`.
pub fn element_text(element: &Element) -> String {
    let tuple = |addrs: &AddrRange, protocol: &Protocol, (lo, hi): (u16, u16)| {
        let ports = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        format!(
            "{} . {} . {ports}",
            range_text(addrs),
            protocol.as_str().to_ascii_lowercase()
        )
    };
    match element {
        Element::Addr(r) => range_text(r),
        Element::Tuple {
            addrs,
            protocol,
            ports,
        } => tuple(addrs, protocol, *ports),
        Element::AddrTo { addrs, to } => format!("{} : {}", range_text(addrs), jump_text(to)),
        Element::TupleTo {
            addrs,
            protocol,
            ports,
            to,
        } => format!("{} : {}", tuple(addrs, protocol, *ports), jump_text(to)),
    }
}

/// nft prints a range as an address, a prefix when it is exactly one, else `lo-hi`.
pub fn range_text(r: &AddrRange) -> String {
    if r.lo == r.hi {
        return r.lo.to_string();
    }
    let prefix = match (r.lo, r.hi) {
        (IpAddr::V4(lo), IpAddr::V4(hi)) => {
            prefix_len(u128::from(u32::from(lo)), u128::from(u32::from(hi)), 32)
        }
        (IpAddr::V6(lo), IpAddr::V6(hi)) => prefix_len(u128::from(lo), u128::from(hi), 128),
        _ => None,
    };
    match prefix {
        Some(len) => format!("{}/{len}", r.lo),
        None => format!("{}-{}", r.lo, r.hi),
    }
}

fn prefix_len(lo: u128, hi: u128, bits: u32) -> Option<u32> {
    if hi < lo {
        return None;
    }
    let mask = hi - lo;
    let aligned = mask & mask.wrapping_add(1) == 0 && lo & mask == 0;
    aligned.then(|| bits - mask.count_ones())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Protocol;

    fn r(lo: &str, hi: &str) -> AddrRange {
        AddrRange {
            lo: lo.parse().unwrap(),
            hi: hi.parse().unwrap(),
        }
    }

    #[test]
    fn ranges_print_like_nft() {
        assert_eq!(range_text(&r("10.0.0.1", "10.0.0.1")), "10.0.0.1");
        assert_eq!(range_text(&r("10.0.0.0", "10.255.255.255")), "10.0.0.0/8");
        assert_eq!(range_text(&r("0.0.0.0", "255.255.255.255")), "0.0.0.0/0");
        assert_eq!(range_text(&r("10.0.0.1", "10.0.0.5")), "10.0.0.1-10.0.0.5");
        assert_eq!(
            range_text(&r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            "::/0"
        );
        assert_eq!(
            range_text(&r("fd00::", "fd00::ffff:ffff:ffff:ffff")),
            "fd00::/64"
        );
        let t = Element::Tuple {
            addrs: r("10.1.2.3", "10.1.2.3"),
            protocol: Protocol::Sctp,
            ports: (0, 65535),
        };
        assert_eq!(element_text(&t), "10.1.2.3 . sctp . 0-65535");
    }

    #[test]
    fn wraps_like_nft() {
        let items: Vec<String> = (1..=5).map(|i| format!("1.0.0.{i}")).collect();
        assert_eq!(
            elements_line(&items, 2),
            "\t\telements = { 1.0.0.1, 1.0.0.2,\n\t\t\t     1.0.0.3, 1.0.0.4,\n\t\t\t     1.0.0.5 }\n"
        );
    }
}
