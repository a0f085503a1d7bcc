//! Self-contained HTML pages: the reachability page of `simulate -o html` and the flow page of
//! `flows -o html`. Each is one file a browser opens without network access: the style, the
//! script and the data (JSON) inline.
//!
//! The pages only show what nftpol computed: every verdict, every explanation and every count is
//! in the embedded data, so no semantics live in JavaScript. The renderers take plain data
//! ([`Reachability`], [`FlowReport`]) and not where it came from: manifests (`simulate`) or a
//! live cluster (the kubectl plugin).
//!
//! Names are user input. The data goes into a `<script type="application/json">` element with
//! every `<`, `>` and `&` escaped as a JSON `\u` escape, so no text in it can close the element;
//! the script writes it into the page as text nodes only, never as markup.

use serde::Serialize;

const PAGE: &str = include_str!("page.html");
const STYLE: &str = include_str!("style.css");
const REACHABILITY_JS: &str = include_str!("reachability.js");
const FLOWS_JS: &str = include_str!("flows.js");

/// Who may reach whom, for each probe (port and protocol), with `explain`'s answer for every
/// ordered pair of pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reachability {
    /// What the state came from (files, a cluster), shown in the page's heading.
    pub source: String,
    /// Every pod, as `namespace/name`, sorted: rows and columns of every matrix.
    pub pods: Vec<String>,
    pub probes: Vec<Probe>,
    /// Policies that were skipped as invalid (not enforced), said on the page.
    pub invalid: Vec<String>,
}

/// One probe's matrix: `allowed[i][j]` for a new connection from `pods[i]` to `pods[j]`, and
/// the explanation `nftpol explain` prints for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub port: u16,
    pub protocol: String,
    pub allowed: Vec<Vec<bool>>,
    pub explanations: Vec<Vec<String>>,
}

/// Recent flow log lines, newest first, and their counts per pod pair and policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowReport {
    pub source: String,
    pub groups: Vec<FlowGroup>,
    pub lines: Vec<FlowEntry>,
    /// Lines of the input that were not flow log lines.
    pub skipped: usize,
}

/// The flow log lines of one pod pair, action, direction, protocol, port and policy list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowGroup {
    pub action: String,
    pub direction: String,
    /// The pod (`namespace/name`) or, when the address is no pod's, the address.
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub port: u16,
    pub pod: String,
    pub policies: Vec<String>,
    pub count: usize,
    pub first: String,
    pub last: String,
}

/// One flow log line as the page lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowEntry {
    pub time: String,
    pub action: String,
    pub direction: String,
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub port: u16,
    pub pod: String,
    pub policies: Vec<String>,
    pub message: String,
}

/// The reachability page.
pub fn reachability_page(data: &Reachability) -> anyhow::Result<String> {
    page(
        &format!("nftpol: who may reach whom ({})", data.source),
        &Embedded::of(data),
        REACHABILITY_JS,
    )
}

/// [`Reachability`] as the page embeds it: each explanation as indexes into one table of
/// distinct lines. The rule lines repeat across pairs and probes; 60 pods and 3 probes are
/// 10,800 explanations, a few MB as whole strings.
#[derive(Serialize)]
struct Embedded<'a> {
    source: &'a str,
    pods: &'a [String],
    invalid: &'a [String],
    lines: Vec<&'a str>,
    probes: Vec<EmbeddedProbe<'a>>,
}

#[derive(Serialize)]
struct EmbeddedProbe<'a> {
    port: u16,
    protocol: &'a str,
    allowed: &'a [Vec<bool>],
    explanations: Vec<Vec<Vec<u32>>>,
}

impl<'a> Embedded<'a> {
    fn of(data: &'a Reachability) -> Self {
        let mut lines: Vec<&'a str> = Vec::new();
        let mut at: std::collections::HashMap<&'a str, u32> = std::collections::HashMap::new();
        let mut index = |text: &'a str| -> Vec<u32> {
            text.split_inclusive('\n')
                .map(|line| {
                    *at.entry(line).or_insert_with(|| {
                        lines.push(line);
                        (lines.len() - 1) as u32
                    })
                })
                .collect()
        };
        let probes = data
            .probes
            .iter()
            .map(|p| EmbeddedProbe {
                port: p.port,
                protocol: &p.protocol,
                allowed: &p.allowed,
                explanations: p
                    .explanations
                    .iter()
                    .map(|row| row.iter().map(|e| index(e)).collect())
                    .collect(),
            })
            .collect();
        Embedded {
            source: &data.source,
            pods: &data.pods,
            invalid: &data.invalid,
            lines,
            probes,
        }
    }
}

/// The flow page.
pub fn flows_page(data: &FlowReport) -> anyhow::Result<String> {
    page(
        &format!("nftpol: flow log ({})", data.source),
        data,
        FLOWS_JS,
    )
}

fn page(title: &str, data: &impl Serialize, script: &str) -> anyhow::Result<String> {
    let json = embed_json(&serde_json::to_string(data)?);
    Ok(fill(
        PAGE,
        &[
            ("title", &escape_text(title)),
            ("style", STYLE),
            ("data", &json),
            ("script", script),
        ],
    ))
}

/// Replaces each `{{key}}` of `template` once, in a single pass: a value is never scanned for
/// markers (the data may contain `{{`).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| {
            let key = &after[..end];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (end, *v))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// JSON that is safe inside a `<script>` element: `<`, `>` and `&` (which only occur inside
/// strings) become `\u` escapes, as do the two line separators older parsers reject.
fn embed_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Text for an HTML element's content or a quoted attribute.
fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hostile() -> Reachability {
        let evil = "x</script><script>alert(1)</script>{{data}}\u{2028}&amp;\nline 2\n".to_string();
        Reachability {
            source: evil.clone(),
            pods: vec![format!("ns/{evil}")],
            probes: vec![Probe {
                port: 80,
                protocol: "TCP".into(),
                allowed: vec![vec![true]],
                explanations: vec![vec![evil.clone()]],
            }],
            invalid: vec![evil],
        }
    }

    #[test]
    fn user_text_cannot_close_the_data_element_and_reads_back_unchanged() {
        let data = hostile();
        let html = reachability_page(&data).unwrap();
        // The template's own two scripts and nothing more.
        assert_eq!(html.matches("</script>").count(), 2, "{html}");
        assert!(!html.contains("<script>alert"));
        let start = html.find("id=\"data\">").unwrap() + "id=\"data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let back: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(back["source"], json!(data.source));
        assert_eq!(back["pods"], json!(data.pods));
        assert_eq!(back["invalid"], json!(data.invalid));
        let words: Vec<String> = back["probes"][0]["explanations"][0][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                back["lines"][i.as_u64().unwrap() as usize]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(words.concat(), data.probes[0].explanations[0][0]);
        assert!(html.contains("<title>nftpol: who may reach whom (x&lt;/script&gt;"));
    }

    #[test]
    fn fill_replaces_markers_of_the_template_only() {
        assert_eq!(
            fill("a{{x}}b{{y}}c{{z}}", &[("x", "{{y}}"), ("y", "2")]),
            "a{{y}}b2c{{z}}"
        );
    }
}
