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
    /// Ask the live cluster (the kubectl plugin: also installed as `kubectl-nftpol`).
    Kubectl(cli::kubectl::Args),
}

/// The kubectl plugin: this binary run as `kubectl-nftpol` (kubectl runs it for
/// `kubectl nftpol ...`).
#[derive(Debug, Parser)]
#[command(
    name = "kubectl nftpol",
    bin_name = "kubectl nftpol",
    version,
    about = "Ask the live cluster what nftpol allows, logs and enforces (read-only)"
)]
struct Plugin {
    #[command(flatten)]
    args: cli::kubectl::Args,
}

/// Whether this binary was started under the plugin's name (a copy, a symlink, krew's link).
fn is_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.strip_suffix(".exe").unwrap_or(n) == "kubectl-nftpol")
}

/// The plugin's log lines unless RUST_LOG says otherwise: warnings, but not kube's one about a
/// kubeconfig's `insecure-skip-tls-verify` on every request (the user's own choice).
const PLUGIN_LOGS: &str = "warn,kube_client::client::tls=error";

/// The plugin: parses its command line, logs to stderr.
fn plugin_main() -> ExitCode {
    let plugin = Plugin::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(PLUGIN_LOGS)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    finish(cli::kubectl::execute(plugin.args))
}

fn main() -> ExitCode {
    if std::env::args_os().next().is_some_and(|a| is_plugin(&a)) {
        return plugin_main();
    }
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
        Command::Kubectl(args) => cli::kubectl::execute(args),
    };
    finish(result)
}

/// The exit code of a command's result (see `cli`), the error on stderr.
fn finish(result: anyhow::Result<()>) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_plugin_name_is_recognised_through_paths_and_links() {
        for name in [
            "kubectl-nftpol",
            "/usr/local/bin/kubectl-nftpol",
            "/root/.krew/bin/kubectl-nftpol",
            "kubectl-nftpol.exe",
        ] {
            assert!(is_plugin(name.as_ref()), "{name}");
        }
        for name in ["nftpol", "/usr/bin/nftpol", "kubectl", "kubectl-nftpol-old"] {
            assert!(!is_plugin(name.as_ref()), "{name}");
        }
    }

    /// krew links a plugin's `bin` as `kubectl-<name>`: that link must start the plugin.
    #[test]
    fn the_krew_manifest_links_the_binary_under_the_plugin_name() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/krew/nftpol.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let m: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(m["kind"], "Plugin");
        let name = m["metadata"]["name"].as_str().unwrap();
        assert!(is_plugin(format!("kubectl-{name}").as_ref()));
        let platforms = m["spec"]["platforms"].as_array().unwrap();
        assert!(!platforms.is_empty());
        for p in platforms {
            assert_eq!(p["bin"], "nftpol");
            assert!(
                p["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["from"] == "nftpol")
            );
        }
    }

    #[test]
    fn both_command_lines_parse() {
        let plugin = Plugin::try_parse_from([
            "kubectl-nftpol",
            "--context",
            "prod",
            "explain",
            "--from",
            "a/b",
            "--to",
            "10.0.0.1",
            "--port",
            "80",
        ])
        .unwrap();
        assert_eq!(plugin.args.connection.context.as_deref(), Some("prod"));
        let cli = Cli::try_parse_from([
            "nftpol",
            "kubectl",
            "simulate",
            "-n",
            "shop",
            "--port",
            "80",
            "--context",
            "x",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Kubectl(_)));
        Cli::command().debug_assert();
        Plugin::command().debug_assert();
    }
}
