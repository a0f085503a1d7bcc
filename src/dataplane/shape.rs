//! Rules compared by structure for the drift check: a rule message (read back from the kernel,
//! or built locally and serialised) parsed into its chain and expressions, each expression its
//! name and its netlink attributes as a tree, and the comparison between what the kernel holds
//! and what was committed.
//!
//! Why not text: libnftnl's debug output changes between releases, and the kernel echoes
//! defaults nftpol never sends (a lookup's flags 0, a log's level); comparing printed text
//! needed string patches for each, and a new one turned every resync into a full replace.
//! Here the kernel's echoes are told apart by rule, not by spelling:
//!
//! - attribute types are compared without the `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER` flag bits
//!   (the kernel sets `NLA_F_NESTED` on nests libnftnl sends without it);
//! - a counter is a counter, whatever it counted;
//! - an attribute present on one side only is accepted when its value is all zeros (a default
//!   that one side states and the other omits, as new kernels do for new attributes) or is a
//!   known default (a log's level 4); anything else (an inverted lookup, another verdict, an
//!   extra expression) is drift.
//!
//! No `unsafe`: the messages are plain bytes, walked by hand.

use std::collections::BTreeMap;
use std::fmt;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// `NLA_TYPE_MASK`: the attribute type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
/// `NFTA_DATA_VERDICT` inside an `nft_data` nest: itself a nest (code, chain).
const NFTA_DATA_VERDICT: u16 = 2;
/// `NFTA_LOG_LEVEL`, whose default (4, warning) the kernel echoes for a log to a group.
const NFTA_LOG_LEVEL: u16 = 5;
const LOG_LEVEL_DEFAULT: u32 = 4;

/// The attributes of an expression that hold an `nft_data` nest (a value or a verdict).
fn data_attrs(expr: &str) -> &'static [u16] {
    match expr {
        "immediate" => &[2],     // NFTA_IMMEDIATE_DATA
        "cmp" => &[3],           // NFTA_CMP_DATA
        "bitwise" => &[4, 5, 7], // NFTA_BITWISE_MASK, _XOR, _DATA
        "range" => &[3, 4],      // NFTA_RANGE_FROM_DATA, _TO_DATA
        _ => &[],
    }
}

/// An attribute's value: bytes, or nested attributes by type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Nest(BTreeMap<u16, Value>),
}

impl Value {
    fn is_zero(&self) -> bool {
        match self {
            Value::Bytes(b) => b.iter().all(|&x| x == 0),
            Value::Nest(n) => n.values().all(Value::is_zero),
        }
    }
}

/// One expression: its name and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    pub name: String,
    pub attrs: BTreeMap<u16, Value>,
}

/// A rule: its chain and expressions, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleShape {
    pub chain: String,
    pub exprs: Vec<Expr>,
}

impl fmt::Display for RuleShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.exprs.iter().map(|e| e.name.as_str()).collect();
        write!(f, "[{}]", names.join(" "))
    }
}

/// The attributes of `buf` as (type without flags, value); `None` when a length is broken.
fn attrs(mut buf: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        out.push((kind, &buf[4..len]));
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Some(out)
}

fn nest(buf: &[u8], nested: &dyn Fn(u16) -> bool) -> Option<BTreeMap<u16, Value>> {
    let mut out = BTreeMap::new();
    for (kind, value) in attrs(buf)? {
        let v = if nested(kind) {
            // An nft_data nest: a value, or a verdict that is a nest again. One that does not
            // parse stays bytes (and differs), rather than losing the whole rule.
            nest(value, &|k| k == NFTA_DATA_VERDICT)
                .map_or_else(|| Value::Bytes(value.to_vec()), Value::Nest)
        } else {
            Value::Bytes(value.to_vec())
        };
        out.insert(kind, v);
    }
    Some(out)
}

/// A NUL-terminated netlink string.
fn string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// Parses one `NFT_MSG_NEWRULE` message (a dump reply, or a locally built rule); `None` when it
/// is truncated or has no chain.
pub fn parse_rule(msg: &[u8]) -> Option<RuleShape> {
    let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    let body = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..len)?;
    let mut chain = None;
    let mut exprs = Vec::new();
    for (kind, value) in attrs(body)? {
        match kind {
            NFTA_RULE_CHAIN => chain = Some(string(value)),
            NFTA_RULE_EXPRESSIONS => {
                for (elem, e) in attrs(value)? {
                    if elem != NFTA_LIST_ELEM {
                        continue;
                    }
                    let mut name = String::new();
                    let mut data: &[u8] = &[];
                    for (k, v) in attrs(e)? {
                        match k {
                            NFTA_EXPR_NAME => name = string(v),
                            NFTA_EXPR_DATA => data = v,
                            _ => {}
                        }
                    }
                    let nested = data_attrs(&name);
                    let attrs = if name == "counter" {
                        // What it counted is not the ruleset.
                        BTreeMap::new()
                    } else {
                        nest(data, &|k| nested.contains(&k))?
                    };
                    exprs.push(Expr { name, attrs });
                }
            }
            _ => {}
        }
    }
    Some(RuleShape {
        chain: chain?,
        exprs,
    })
}

/// Whether an attribute present on one side only is a default the other side left implicit.
fn implicit(expr: &str, kind: u16, value: &Value) -> bool {
    if value.is_zero() {
        return true;
    }
    matches!(
        (expr, kind, value),
        ("log", NFTA_LOG_LEVEL, Value::Bytes(b)) if b.as_slice() == LOG_LEVEL_DEFAULT.to_be_bytes()
    )
}

fn same_attrs(
    expr: &str,
    want: &BTreeMap<u16, Value>,
    have: &BTreeMap<u16, Value>,
) -> Result<(), String> {
    for (kind, w) in want {
        match (have.get(kind), w) {
            (Some(Value::Nest(h)), Value::Nest(w)) => {
                same_attrs(expr, w, h).map_err(|e| format!("attribute {kind}: {e}"))?
            }
            (Some(h), w) if h == w => {}
            (Some(_), _) => return Err(format!("attribute {kind} differs")),
            (None, w) if implicit(expr, *kind, w) => {}
            (None, _) => return Err(format!("attribute {kind} is missing")),
        }
    }
    for (kind, h) in have {
        if !want.contains_key(kind) && !implicit(expr, *kind, h) {
            return Err(format!("unexpected attribute {kind}"));
        }
    }
    Ok(())
}

/// `Ok` when the kernel's rule `have` does what `want` (the committed one) says; otherwise
/// what differs first.
pub fn compare(want: &RuleShape, have: &RuleShape) -> Result<(), String> {
    if want.exprs.len() != have.exprs.len() {
        return Err(format!(
            "{} expressions {have}, expected {} {want}",
            have.exprs.len(),
            want.exprs.len()
        ));
    }
    for (i, (w, h)) in want.exprs.iter().zip(&have.exprs).enumerate() {
        if w.name != h.name {
            return Err(format!(
                "expression #{i} is {}, expected {}",
                h.name, w.name
            ));
        }
        same_attrs(&w.name, &w.attrs, &h.attrs)
            .map_err(|e| format!("expression #{i} ({}): {e}", w.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::program;
    use crate::dataplane::ruleset::{AddrField, Family, LogAction, LogTo, Rule};
    use crate::policy::model::Direction;

    fn shape(rule: &Rule) -> RuleShape {
        let bytes = program::rule_message("forward", rule).expect("builds");
        parse_rule(&bytes).expect("parses")
    }

    fn lookup() -> Rule {
        Rule::AddrDrop {
            family: Family::V4,
            field: AddrField::Saddr,
            set: "unknown_v4".into(),
        }
    }

    fn expr<'a>(r: &'a mut RuleShape, name: &str) -> &'a mut Expr {
        r.exprs.iter_mut().find(|e| e.name == name).expect(name)
    }

    #[test]
    fn a_built_rule_parses_into_its_expressions() {
        let r = shape(&lookup());
        assert_eq!(r.chain, "forward");
        let names: Vec<&str> = r.exprs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["meta", "cmp", "payload", "lookup", "immediate"]);
        assert_eq!(compare(&r, &r), Ok(()));
        // The verdict is a nest in a nest: immediate -> data -> verdict -> code.
        let Some(Value::Nest(data)) = r.exprs[4].attrs.get(&2) else {
            panic!("{r:?}")
        };
        assert!(matches!(data.get(&NFTA_DATA_VERDICT), Some(Value::Nest(_))));
    }

    #[test]
    fn kernel_echoes_are_not_drift() {
        let want = shape(&lookup());
        let mut have = want.clone();
        // Lookup flags 0 stated by the kernel, a new zero attribute, log level 4.
        expr(&mut have, "lookup")
            .attrs
            .insert(5, Value::Bytes(vec![0; 4]));
        expr(&mut have, "payload")
            .attrs
            .insert(0x99, Value::Bytes(vec![0; 8]));
        assert_eq!(compare(&want, &have), Ok(()));

        let logged = Rule::LimitedLog(LogTo::new(LogAction::Drop, Direction::Ingress, 100));
        let want = shape(&logged);
        let mut have = want.clone();
        expr(&mut have, "log").attrs.insert(
            NFTA_LOG_LEVEL,
            Value::Bytes(LOG_LEVEL_DEFAULT.to_be_bytes().to_vec()),
        );
        assert_eq!(compare(&want, &have), Ok(()));
        expr(&mut have, "log")
            .attrs
            .insert(NFTA_LOG_LEVEL, Value::Bytes(1u32.to_be_bytes().to_vec()));
        assert!(compare(&want, &have).is_err(), "another level is drift");
    }

    #[test]
    fn counters_compare_whatever_they_counted() {
        let want = shape(&Rule::CounterDrop);
        let mut bytes = program::rule_message("forward", &Rule::CounterDrop).unwrap();
        // The kernel's counter carries values; the parse drops them.
        let have = parse_rule(&bytes).unwrap();
        assert_eq!(compare(&want, &have), Ok(()));
        bytes.truncate(bytes.len() - 4);
        assert_eq!(parse_rule(&bytes), None, "a truncated message is refused");
    }

    #[test]
    fn changed_rules_are_drift() {
        let want = shape(&lookup());
        // An inverted lookup (`ip saddr != @unknown_v4 drop`).
        let mut have = want.clone();
        expr(&mut have, "lookup")
            .attrs
            .insert(5, Value::Bytes(1u32.to_be_bytes().to_vec()));
        let err = compare(&want, &have).unwrap_err();
        assert!(
            err.contains("lookup") && err.contains("unexpected attribute 5"),
            "{err}"
        );
        // Another set.
        let other = shape(&Rule::AddrDrop {
            family: Family::V4,
            field: AddrField::Saddr,
            set: "strict_v4".into(),
        });
        assert!(compare(&want, &other).is_err());
        // Another field (daddr), another verdict, an expression more or less.
        let daddr = shape(&Rule::AddrDrop {
            family: Family::V4,
            field: AddrField::Daddr,
            set: "unknown_v4".into(),
        });
        assert!(compare(&want, &daddr).is_err());
        assert!(compare(&shape(&Rule::CounterDrop), &shape(&Rule::CounterReturn)).is_err());
        let mut longer = want.clone();
        longer.exprs.push(want.exprs[0].clone());
        assert!(compare(&want, &longer).unwrap_err().contains("expressions"));
    }

    /// The flag bits of attribute types (the kernel nests with `NLA_F_NESTED`) are ignored.
    #[test]
    fn nested_flags_are_ignored() {
        let mut bytes = program::rule_message("forward", &Rule::CtInvalidDrop).unwrap();
        let want = parse_rule(&bytes).unwrap();
        // Set NLA_F_NESTED on NFTA_RULE_EXPRESSIONS wherever it starts.
        let body = NLMSG_HDRLEN + NFGENMSG_LEN;
        let mut off = body;
        while off + 4 <= bytes.len() {
            let len = u16::from_ne_bytes([bytes[off], bytes[off + 1]]) as usize;
            let kind = u16::from_ne_bytes([bytes[off + 2], bytes[off + 3]]);
            if kind == NFTA_RULE_EXPRESSIONS {
                bytes[off + 2..off + 4].copy_from_slice(&(kind | 0x8000).to_ne_bytes());
            }
            off += len.next_multiple_of(4).max(4);
        }
        assert_eq!(parse_rule(&bytes), Some(want));
    }
}
