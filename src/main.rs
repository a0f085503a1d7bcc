//! The `nftpol` binary: parses the command line and hands over to `nftpol::cli`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nftpol::cli;

#[derive(Debug, Parser)]
#[command(
    name = "nftpol",
    version,
    about = "Kubernetes NetworkPolicy enforcement with nftables"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (flow logs included).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "NFTPOL_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Predict, for every pair of pods, whether a new connection would be allowed.
    Simulate(cli::simulate::Args),
    /// Explain the verdict for one connection: which policies isolate, which rule allows.
    Explain(cli::explain::Args),
    /// Count flow log lines (a file or stdin) per pod pair and policy, newest first.
    Flows(cli::flows::Args),
    /// Print the nftables ruleset nftpol would program on a node, as nft text.
    Render(cli::render::Args),
    /// Enforce a folder of manifests on this node and follow its changes.
    Run(cli::run::Args),
    /// Enforce NetworkPolicy from the Kubernetes API on this node (the DaemonSet's command).
    Daemon(cli::daemon::Args),
    /// Remove everything nftpol programmed on this node (the uninstall path).
    Cleanup(cli::cleanup::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or `kubectl logs` gets plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match cli.command {
        Command::Simulate(args) => cli::simulate::execute(args),
        Command::Explain(args) => cli::explain::execute(args),
        Command::Flows(args) => cli::flows::execute(args),
        Command::Render(args) => cli::render::execute(args),
        Command::Run(args) => cli::run::execute(args),
        Command::Daemon(args) => cli::daemon::execute(args),
        Command::Cleanup(args) => cli::cleanup::execute(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<cli::InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
