//! Flow log lines read back: the lines [`crate::observe::flowlog`] writes (text, or JSON with
//! `--log-format json`), as `kubectl logs` or a file keeps them, parsed into
//! [`FlowEntry`]s and counted per pod pair and policy for `nftpol flows`.
//!
//! Other lines (nftpol's other logs, a container runtime's) are skipped, not errors.

use std::collections::HashMap;

use crate::observe::html::{FlowEntry, FlowGroup, FlowReport};

/// The target of flow log lines.
const TARGET: &str = "nftpol::flow";

/// The flow log line in `line`, or `None` when it is none.
pub fn parse_line(line: &str) -> Option<FlowEntry> {
    let line = strip_ansi(line.trim());
    match line.find('{') {
        Some(at) if line.trim_end().ends_with('}') => parse_json(&line[at..]),
        _ => parse_text(&line),
    }
}

/// Terminal colours, which the text format has when nftpol's stderr was a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_json(text: &str) -> Option<FlowEntry> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("target")?.as_str()? != TARGET {
        return None;
    }
    // `flatten_event(true)` puts the fields beside `target`; without it they are in `fields`.
    let fields = v.get("fields").filter(|f| f.is_object()).unwrap_or(&v);
    let get = |k: &str| -> String {
        match fields.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    Some(entry(
        v.get("timestamp")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string(),
        &get,
        get("message"),
    ))
}

fn parse_text(line: &str) -> Option<FlowEntry> {
    let marker = format!(" {TARGET}: ");
    let at = line.find(&marker)?;
    let before = &line[..at];
    let after = &line[at + marker.len()..];
    let fields_at = after.rfind(" action=")?;
    let message = after[..fields_at].to_string();
    let fields = parse_fields(&after[fields_at + 1..]);
    let time = before
        .split_whitespace()
        .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or("")
        .to_string();
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    Some(entry(time, &get, message))
}

/// `key=value key="quoted \"value\"" ...`, as tracing's text format writes fields.
fn parse_fields(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim_start();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_string();
        let value_text = &rest[eq + 1..];
        let (value, used) = if let Some(quoted) = value_text.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, other)) => value.push(other),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, 1 + end)
        } else {
            let end = value_text.find(' ').unwrap_or(value_text.len());
            (value_text[..end].to_string(), end)
        };
        out.insert(key, value);
        rest = value_text[used.min(value_text.len())..].trim_start();
    }
    out
}

fn entry(time: String, get: &dyn Fn(&str) -> String, message: String) -> FlowEntry {
    let either = |pod: String, ip: String| if pod.is_empty() { ip } else { pod };
    FlowEntry {
        time,
        action: get("action"),
        direction: get("direction"),
        src: either(get("src_pod"), get("src")),
        dst: either(get("dst_pod"), get("dst")),
        protocol: get("protocol"),
        port: get("port").parse().unwrap_or(0),
        pod: get("pod"),
        policies: get("policies")
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        message,
    }
}

/// What the flow page shows of `entries` (in the order read): every line counted, the `last`
/// newest listed. `source` says where they came from (files, a pod's logs).
pub fn report(
    mut entries: Vec<FlowEntry>,
    skipped: usize,
    source: &str,
    last: usize,
) -> FlowReport {
    newest_first(&mut entries);
    let groups = summarize(&entries);
    entries.truncate(last);
    FlowReport {
        source: source.to_string(),
        groups,
        lines: entries,
        skipped,
    }
}

/// Newest first: by time, and among equal times the one read last first.
pub fn newest_first(entries: &mut [FlowEntry]) {
    entries.reverse();
    entries.sort_by(|a, b| b.time.cmp(&a.time));
}

/// action, direction, src, dst, protocol, port, policies.
type GroupKey = (String, String, String, String, String, u16, Vec<String>);

/// Counts per pod pair, action, direction, protocol, port and policies; the most recently seen
/// group first.
pub fn summarize(entries: &[FlowEntry]) -> Vec<FlowGroup> {
    let mut groups: Vec<FlowGroup> = Vec::new();
    let mut at: HashMap<GroupKey, usize> = HashMap::new();
    for e in entries {
        let key = (
            e.action.clone(),
            e.direction.clone(),
            e.src.clone(),
            e.dst.clone(),
            e.protocol.clone(),
            e.port,
            e.policies.clone(),
        );
        match at.get(&key) {
            Some(&i) => {
                let g = &mut groups[i];
                g.count += 1;
                if e.time < g.first {
                    g.first = e.time.clone();
                }
                if e.time > g.last {
                    g.last = e.time.clone();
                }
            }
            None => {
                at.insert(key, groups.len());
                groups.push(FlowGroup {
                    action: e.action.clone(),
                    direction: e.direction.clone(),
                    src: e.src.clone(),
                    dst: e.dst.clone(),
                    protocol: e.protocol.clone(),
                    port: e.port,
                    pod: e.pod.clone(),
                    policies: e.policies.clone(),
                    count: 1,
                    first: e.time.clone(),
                    last: e.time.clone(),
                });
            }
        }
    }
    groups.sort_by(|a, b| b.last.cmp(&a.last).then(b.count.cmp(&a.count)));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"2026-11-22T02:10:03.512657Z  INFO nftpol::flow: TCP drop e2e/a1 (10.244.1.11) -> e2e/b1 (10.244.2.21:81): dropped: isolated for ingress by e2e/b1-echo, e2e/b1-from-a1, and no ingress rule of them allows it action="drop" direction="ingress" src=10.244.1.11 src_pod="e2e/a1" dst=10.244.2.21 dst_pod="e2e/b1" protocol=TCP port=81 pod="e2e/b1" policies=e2e/b1-echo,e2e/b1-from-a1"#;

    #[test]
    fn the_documented_text_line() {
        let e = parse_line(TEXT).unwrap();
        assert_eq!(e.time, "2026-11-22T02:10:03.512657Z");
        assert_eq!(
            (e.action.as_str(), e.direction.as_str()),
            ("drop", "ingress")
        );
        assert_eq!((e.src.as_str(), e.dst.as_str()), ("e2e/a1", "e2e/b1"));
        assert_eq!((e.protocol.as_str(), e.port), ("TCP", 81));
        assert_eq!(e.pod, "e2e/b1");
        assert_eq!(e.policies, ["e2e/b1-echo", "e2e/b1-from-a1"]);
        assert!(e.message.starts_with("TCP drop e2e/a1 (10.244.1.11) -> "));
        assert!(e.message.ends_with("no ingress rule of them allows it"));
        let coloured =
            format!("\u{1b}[2m{TEXT}\u{1b}[0m").replace(" INFO", " \u{1b}[32m INFO\u{1b}[0m");
        assert_eq!(parse_line(&coloured), Some(e));
    }

    #[test]
    fn a_json_line_flattened_or_not_and_other_lines_skipped() {
        let flat = r#"{"timestamp":"2026-11-22T02:10:04Z","level":"INFO","message":"UDP drop 10.0.0.9 -> x/y (10.244.1.2:53): dropped","action":"drop","direction":"ingress","src":"10.0.0.9","src_pod":"","dst":"10.244.1.2","dst_pod":"x/y","protocol":"UDP","port":53,"pod":"x/y","policies":"x/deny","target":"nftpol::flow"}"#;
        let e = parse_line(flat).unwrap();
        assert_eq!(
            (e.src.as_str(), e.dst.as_str(), e.port),
            ("10.0.0.9", "x/y", 53)
        );
        assert_eq!(e.policies, ["x/deny"]);
        let nested = r#"{"timestamp":"2026-11-22T02:10:04Z","level":"INFO","fields":{"message":"m","action":"allow","src_pod":"a/b","dst_pod":"c/d","port":80,"policies":"c/p#0"},"target":"nftpol::flow"}"#;
        let n = parse_line(nested).unwrap();
        assert_eq!(
            (n.action.as_str(), n.src.as_str(), n.policies[0].as_str()),
            ("allow", "a/b", "c/p#0")
        );
        assert_eq!(
            parse_line(r#"{"target":"nftpol::engine","message":"applied"}"#),
            None
        );
        assert_eq!(
            parse_line("2026-11-22T02:10:04Z  INFO nftpol::engine: applied"),
            None
        );
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn counted_per_pair_and_policy_newest_first() {
        let later = TEXT.replace("02:10:03.512657Z", "02:11:00.000000Z");
        let other = TEXT
            .replace("e2e/a1", "e2e/a2")
            .replace("02:10:03.512657Z", "02:10:30.000000Z");
        let mut entries: Vec<FlowEntry> = [TEXT, &later, &other]
            .iter()
            .filter_map(|l| parse_line(l))
            .collect();
        newest_first(&mut entries);
        assert_eq!(entries[0].time, "2026-11-22T02:11:00.000000Z");
        let groups = summarize(&entries);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].src.as_str(), groups[0].count), ("e2e/a1", 2));
        assert_eq!(groups[0].first, "2026-11-22T02:10:03.512657Z");
        assert_eq!((groups[1].src.as_str(), groups[1].count), ("e2e/a2", 1));
    }
}
