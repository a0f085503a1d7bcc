//! `nftpol simulate`: the predicted reachability matrix for each port and protocol asked, as a
//! table, JSON, or the HTML page of [`crate::observe::html`] (with `explain`'s answer for every
//! pair).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::observe::html::{self, Reachability};
use crate::policy::compile::{NodePlan, Scope, compile};
use crate::policy::index::ClusterIndex;
use crate::policy::model::Protocol;
use crate::policy::verdict::{explain_text, judge_pods};
use crate::source::manifest::Loaded;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON; multi-document YAML and `kind: List` allowed).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// `json`: one matrix object for one probe, an array of them for several. `html`: one
    /// self-contained page (matrix, explanations, namespace summary, filters).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Html,
}

/// The probes (`--port`, `--protocol`), shared with other commands that predict a matrix.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The destination port, `PORT` or `PORT/PROTOCOL`; repeat (or separate with commas) for
    /// several. A port without a protocol is probed with each `--protocol`.
    #[arg(long, required = true, value_delimiter = ',', value_name = "PORT[/PROTOCOL]", value_parser = parse_port)]
    pub port: Vec<PortArg>,
    /// Repeat (or separate with commas) for several.
    #[arg(long, default_value = "TCP", value_delimiter = ',')]
    pub protocol: Vec<Protocol>,
}

/// `--port`: a port, and the protocol when the argument names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortArg {
    pub port: u16,
    pub protocol: Option<Protocol>,
}

fn parse_port(s: &str) -> Result<PortArg, String> {
    let (port, protocol) = match s.split_once('/') {
        Some((port, protocol)) => (port, Some(protocol.parse::<Protocol>()?)),
        None => (s, None),
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port number (0-65535)"))?;
    Ok(PortArg { port, protocol })
}

impl ProbeArgs {
    /// Each probe once, in the order given: a port with its own protocol, or with each
    /// `--protocol`.
    pub fn probes(&self) -> Vec<(u16, Protocol)> {
        let mut out = Vec::new();
        for p in &self.port {
            let protocols = match p.protocol {
                Some(own) => vec![own],
                None => self.protocol.clone(),
            };
            for protocol in protocols {
                if !out.contains(&(p.port, protocol)) {
                    out.push((p.port, protocol));
                }
            }
        }
        out
    }
}

/// The reachability matrix, in the JSON schema `simulate -o json` and the testbed print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Matrix {
    pub port: u16,
    pub protocol: Protocol,
    pub pods: Vec<String>,
    pub allowed: BTreeMap<String, BTreeMap<String, bool>>,
}

impl Matrix {
    /// Every ordered pair of the plan's endpoints, a pod to itself included.
    pub fn predict(plan: &NodePlan, port: u16, protocol: Protocol) -> Self {
        let pods: Vec<String> = plan.endpoints.keys().map(|k| k.to_string()).collect();
        let mut allowed = BTreeMap::new();
        for (fk, from) in &plan.endpoints {
            let row = plan
                .endpoints
                .iter()
                .map(|(tk, to)| {
                    let ok = judge_pods(from, to, protocol, port).is_some_and(|v| v.allowed());
                    (tk.to_string(), ok)
                })
                .collect();
            allowed.insert(fk.to_string(), row);
        }
        Matrix {
            port,
            protocol,
            pods,
            allowed,
        }
    }

    /// A truth table for people: `.` allowed, `X` denied; rows are clients, columns servers.
    /// The diagonal is `-` whatever the matrix holds: a pod's connection to itself never leaves
    /// the pod, so no node-level engine judges it (the measured one is always open, the
    /// predicted one follows the policies), and two tables that differ only there would read as
    /// a bug. The JSON keeps the real cells.
    pub fn to_table(&self) -> String {
        let width = self.pods.iter().map(|p| p.len()).max().unwrap_or(0).max(4);
        let mut out = format!(
            "{}/{}: new connections (rows: from, columns: to; . allowed, X denied, - a pod to itself: not policed)\n",
            self.port, self.protocol
        );
        out.push_str(&format!("{:width$}", ""));
        for (i, _) in self.pods.iter().enumerate() {
            out.push_str(&format!(" {:>3}", i + 1));
        }
        out.push('\n');
        for (i, from) in self.pods.iter().enumerate() {
            out.push_str(&format!("{from:width$}"));
            for to in &self.pods {
                if to == from {
                    out.push_str("   -");
                    continue;
                }
                let ok = self.allowed.get(from).and_then(|r| r.get(to)).copied();
                out.push_str(match ok {
                    Some(true) => "   .",
                    Some(false) => "   X",
                    None => "   ?",
                });
            }
            out.push_str(&format!("   ({})\n", i + 1));
        }
        out
    }
}

/// The data of the HTML page: for each probe the matrix and `explain`'s words for every
/// ordered pair of the plan's endpoints. Whatever the state came from (manifests, a live
/// cluster): `source` says which, `invalid` lists the policies skipped.
pub fn reachability(
    index: &ClusterIndex,
    plan: &NodePlan,
    probes: &[(u16, Protocol)],
    source: &str,
    invalid: &[String],
) -> Reachability {
    let pods: Vec<String> = plan.endpoints.keys().map(|k| k.to_string()).collect();
    let probes = probes
        .iter()
        .map(|&(port, protocol)| {
            let mut allowed = Vec::with_capacity(pods.len());
            let mut explanations = Vec::with_capacity(pods.len());
            for (from_name, from) in pods.iter().zip(plan.endpoints.values()) {
                let (row_allowed, row_words): (Vec<bool>, Vec<String>) = pods
                    .iter()
                    .zip(plan.endpoints.values())
                    .map(|(to_name, to)| match judge_pods(from, to, protocol, port) {
                        Some(v) => (
                            v.allowed(),
                            explain_text(index, plan, from_name, to_name, &v),
                        ),
                        None => (
                            false,
                            format!("{from_name} -> {to_name}: they share no address family\n"),
                        ),
                    })
                    .unzip();
                allowed.push(row_allowed);
                explanations.push(row_words);
            }
            html::Probe {
                port,
                protocol: protocol.as_str().to_string(),
                allowed,
                explanations,
            }
        })
        .collect();
    Reachability {
        source: source.to_string(),
        pods,
        probes,
        invalid: invalid.to_vec(),
    }
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let loaded = super::load_input(&args.files)?;
    let source = args
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    report(&loaded, &args.probes.probes(), args.output, &source)
}

/// Prints the matrices of `loaded` (read from files, or from the live cluster by
/// `nftpol kubectl simulate`), one per probe; `source` names where the state came from.
pub fn report(
    loaded: &Loaded,
    probes: &[(u16, Protocol)],
    output: Output,
    source: &str,
) -> anyhow::Result<()> {
    let index = ClusterIndex::from_state(&loaded.state);
    let plan = compile(&index, &Scope::Cluster);
    for (a, b) in crate::policy::compile::cluster_policy_ties(&index, &plan) {
        eprintln!(
            "warning: {a} and {b} have the same tier and priority and select a common pod: the API leaves their order undefined; nftpol evaluates them by name"
        );
    }
    for (pod, reason) in &plan.skipped {
        eprintln!("note: {pod} is left out ({})", reason.as_str());
    }
    let matrices: Vec<Matrix> = probes
        .iter()
        .map(|&(port, protocol)| Matrix::predict(&plan, port, protocol))
        .collect();
    match output {
        Output::Json if matrices.len() == 1 => {
            println!("{}", serde_json::to_string_pretty(&matrices[0])?)
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&matrices)?),
        Output::Html => {
            let invalid: Vec<String> = loaded.invalid.iter().map(ToString::to_string).collect();
            let data = reachability(&index, &plan, probes, source, &invalid);
            print!("{}", html::reachability_page(&data)?);
        }
        Output::Table => {
            for (i, matrix) in matrices.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", matrix.to_table());
            }
            if !loaded.invalid.is_empty() {
                println!(
                    "\n{} invalid polic{} skipped (not enforced):",
                    loaded.invalid.len(),
                    if loaded.invalid.len() == 1 {
                        "y"
                    } else {
                        "ies"
                    }
                );
                for s in &loaded.invalid {
                    println!("  {s}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(cells: &[(&str, &str, bool)]) -> Matrix {
        let mut allowed: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        for (f, t, ok) in cells {
            allowed
                .entry(f.to_string())
                .or_default()
                .insert(t.to_string(), *ok);
        }
        Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            pods: vec!["ns/a".into(), "ns/b".into()],
            allowed,
        }
    }

    #[test]
    fn the_diagonal_is_a_dash_whatever_the_cell_holds() {
        // A measured matrix (self always open) and a predicted one (self denied by the policy)
        // that differ only on the diagonal must print the same table.
        let measured = matrix(&[
            ("ns/a", "ns/a", true),
            ("ns/a", "ns/b", false),
            ("ns/b", "ns/a", true),
            ("ns/b", "ns/b", true),
        ]);
        let predicted = matrix(&[
            ("ns/a", "ns/a", false),
            ("ns/a", "ns/b", false),
            ("ns/b", "ns/a", true),
            ("ns/b", "ns/b", false),
        ]);
        let table = measured.to_table();
        assert_eq!(table, predicted.to_table());
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows, ["ns/a   -   X   (1)", "ns/b   .   -   (2)"]);
    }
}
