//! `nftpol simulate`: the predicted reachability matrix for one port and protocol.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::policy::compile::{NodePlan, Scope, compile};
use crate::policy::index::ClusterIndex;
use crate::policy::model::Protocol;
use crate::policy::verdict::judge_pods;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON; multi-document YAML and `kind: List` allowed).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: Protocol,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
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
    pub fn to_table(&self) -> String {
        let width = self.pods.iter().map(|p| p.len()).max().unwrap_or(0).max(4);
        let mut out = format!(
            "{}/{}: new connections (rows: from, columns: to; . allowed, X denied)\n",
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

pub fn execute(args: Args) -> anyhow::Result<()> {
    let loaded = super::load_input(&args.files)?;
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
    let matrix = Matrix::predict(&plan, args.port, args.protocol);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&matrix)?),
        Output::Table => {
            print!("{}", matrix.to_table());
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
