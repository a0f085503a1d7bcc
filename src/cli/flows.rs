//! `nftpol flows`: flow log lines (from files or stdin, as `kubectl logs` or `run` wrote them)
//! counted per pod pair and policy, newest first; as a table or the HTML page of
//! [`crate::observe::html`].

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use anyhow::Context;

use crate::observe::flowread::{parse_line, report};
use crate::observe::html::{self, FlowEntry, FlowReport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files of log lines (nftpol's stderr, `kubectl logs`); none or `-`: standard input.
    /// Lines that are not flow log lines are skipped.
    pub files: Vec<PathBuf>,
    /// List at most this many of the newest lines (every line is counted).
    #[arg(long, default_value = "1000")]
    pub last: usize,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Html,
}

/// Reads flow log lines; the count of the other lines is returned beside them.
fn read(mut input: impl Read, what: &str, out: &mut Vec<FlowEntry>) -> anyhow::Result<usize> {
    let mut skipped = 0;
    let mut buf = Vec::new();
    let mut reader = BufReader::new(&mut input);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {what}"))?;
        if n == 0 {
            return Ok(skipped);
        }
        // Logs may carry bytes of other encodings; a flow line is ASCII but for names.
        match parse_line(&String::from_utf8_lossy(&buf)) {
            Some(e) => out.push(e),
            None if buf.iter().all(u8::is_ascii_whitespace) => {}
            None => skipped += 1,
        }
    }
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut skipped = 0;
    let stdin_only = args.files.is_empty();
    for f in &args.files {
        if f.as_os_str() == "-" {
            skipped += read(std::io::stdin().lock(), "standard input", &mut entries)?;
        } else {
            let file = std::fs::File::open(f)
                .with_context(|| format!("opening {}", f.display()))
                .map_err(|e| super::InputError(format!("{e:#}")))?;
            skipped += read(file, &f.display().to_string(), &mut entries)?;
        }
    }
    if stdin_only {
        skipped += read(std::io::stdin().lock(), "standard input", &mut entries)?;
    }
    let source = if stdin_only {
        "standard input".to_string()
    } else {
        args.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let report = report(entries, skipped, &source, args.last);
    match args.output {
        Output::Html => print!("{}", html::flows_page(&report)?),
        Output::Table => print!("{}", table(&report)),
    }
    Ok(())
}

fn table(r: &FlowReport) -> String {
    let mut out = String::from(
        "COUNT  LAST SEEN                    ACTION  DIR      FROM -> TO  PORT  POLICIES\n",
    );
    for g in &r.groups {
        out.push_str(&format!(
            "{:>5}  {:<27}  {:<6}  {:<7}  {} -> {}  {}/{}  {}\n",
            g.count,
            g.last,
            g.action,
            g.direction,
            g.src,
            g.dst,
            g.port,
            g.protocol,
            g.policies.join(",")
        ));
    }
    if r.groups.is_empty() {
        out.push_str("(no flow log lines)\n");
    }
    out
}
