//! `nftpol-testbed`: proves nftpol with real packets on a node made of network namespaces.
//!
//! `nftpol-testbed probe -f MANIFESTS --port 80 --protocol TCP` places every pod with an
//! address on one testbed node, runs the real `nftpol run` in the node namespace, waits until it
//! enforces the manifests, then tries a new connection for every ordered pair of pods and prints
//! the result in `nftpol simulate`'s JSON schema (or as a table). Needs root.
//!
//! `--engine nftpol-api` or `--engine kube-network-policies` (with `--kube-state`, a cluster of
//! `hack/kube/up.sh`) writes the manifests to a real API server instead and runs `nftpol daemon`
//! or kube-network-policies (`--knp`, from `hack/compare/build.sh`) in the node namespace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nftpol::policy::model::Protocol;
use nftpol_testbed::kube::Enforcer;
use nftpol_testbed::{self as testbed, Engine, Mode, Testbed};

#[derive(Debug, Parser)]
#[command(
    name = "nftpol-testbed",
    version,
    about = "Prove nftpol with real packets on a node of network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enforce manifests with the real daemon and probe every pair of pods.
    Probe(ProbeArgs),
    /// Delete namespaces and folders left by testbeds that were killed (SIGKILL).
    Cleanup,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    /// `nftpol run` on a folder of the manifests.
    Nftpol,
    /// `nftpol daemon` reading a real API server (needs --kube-state).
    NftpolApi,
    /// kube-network-policies reading a real API server (needs --kube-state and --knp).
    KubeNetworkPolicies,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Bridge,
    Routed,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Manifest files or folders (Namespaces, Pods with status.podIPs, NetworkPolicies).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "TCP")]
    protocol: Protocol,
    /// flannel-style bridge or Calico-style routed node.
    #[arg(long, value_enum, default_value = "bridge")]
    mode: ModeArg,
    #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
    output: Output,
    /// How long a probe waits before it counts as denied, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// The nftpol binary (default: next to this one).
    #[arg(long, env = testbed::daemon::BIN_ENV)]
    nftpol: Option<PathBuf>,
    /// What enforces: nftpol on a folder, or an enforcer that reads the API server of
    /// --kube-state, where the testbed writes the manifests (Namespaces, Pods, NetworkPolicies).
    #[arg(long, value_enum, default_value = "nftpol")]
    engine: EngineArg,
    /// State folder of a cluster made by hack/kube/up.sh (API engines).
    #[arg(long, env = "NFTPOL_KUBE_STATE")]
    kube_state: Option<PathBuf>,
    /// The kube-network-policies binary (hack/compare/build.sh prints its path).
    #[arg(long, env = "NFTPOL_KNP_BIN")]
    knp: Option<PathBuf>,
    /// Write the daemon's final /metrics scrape (OpenMetrics text) to this file.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Write timings (setup, apply, probe) as JSON to this file.
    #[arg(long)]
    timings_out: Option<PathBuf>,
    /// Write the daemon's flow log lines (the connections it dropped, one per line) to this
    /// file.
    #[arg(long)]
    flow_log_out: Option<PathBuf>,
}

/// Where the testbed's daemon serves /metrics, inside the node namespace.
const METRICS_PORT: u16 = 9964;

fn probe(args: ProbeArgs) -> Result<()> {
    let started = Instant::now();
    let mut objects = testbed::manifests::read_objects(&args.files)?;
    let placed = testbed::manifests::place_pods(&mut objects, testbed::NODE_NAME);
    let state = nftpol::source::manifest::load_values("manifests", objects.iter().cloned())
        .context("loading the manifests")?
        .state;
    let mode = match args.mode {
        ModeArg::Bridge => Mode::Bridge,
        ModeArg::Routed => Mode::Routed,
    };
    let bin = match args.nftpol {
        Some(b) => b,
        None => testbed::daemon::find_binary()?,
    };
    let engine = match args.engine {
        EngineArg::Nftpol => Engine::Nftpol,
        api => {
            let dir = args
                .kube_state
                .clone()
                .context("--engine nftpol-api and kube-network-policies need --kube-state")?;
            let cluster = testbed::kube::Cluster::from_state(&dir)?;
            let (enforcer, binary, extra) = if api == EngineArg::KubeNetworkPolicies {
                let knp = args.knp.clone().context(
                    "--engine kube-network-policies needs --knp (hack/compare/build.sh prints it)",
                )?;
                (Enforcer::KubeNetworkPolicies, knp, vec![])
            } else {
                let metrics = vec!["--metrics-addr".into(), format!("127.0.0.1:{METRICS_PORT}")];
                (Enforcer::Nftpol, bin.clone(), metrics)
            };
            Engine::Api(Box::new(testbed::kube::Config {
                enforcer,
                binary,
                cluster,
                args: extra,
            }))
        }
    };
    // `cargo run --bin nftpol-testbed` does not rebuild `nftpol`: say which one enforces.
    let shown = match &engine {
        Engine::Api(c) => c.binary.clone(),
        Engine::Nftpol => bin.clone(),
    };
    eprintln!("nftpol-testbed: enforcing with {}", shown.display());
    let mut bed = Testbed::with_engine(mode, &state, engine)?;
    bed.set_binary(bin);
    bed.set_daemon_args(vec![
        "--metrics-addr".into(),
        format!("127.0.0.1:{METRICS_PORT}"),
    ]);
    bed.set_probe_timeout(Duration::from_millis(args.timeout_ms));
    let setup = started.elapsed();
    let t = Instant::now();
    let status = bed.apply_objects(&objects)?;
    let apply = t.elapsed();
    let t = Instant::now();
    let matrix = bed.probe_matrix(args.port, args.protocol)?;
    let probing = t.elapsed();
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&matrix).context("serializing the matrix")?
        ),
        Output::Table => print!("{}", matrix.to_table()),
    }
    if let Some(path) = args.metrics_out {
        let port = match args.engine {
            EngineArg::KubeNetworkPolicies => 9080,
            _ => METRICS_PORT,
        };
        let (code, body) = bed.http_get(port, "/metrics")?;
        if code != 200 {
            anyhow::bail!("GET /metrics answered {code}: {body}");
        }
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = args.flow_log_out {
        // The reader writes a line as soon as the kernel hands it the packet; the last probes'
        // lines may still be on their way: wait until the count stops moving.
        let flow_lines = |bed: &Testbed| -> String {
            bed.daemon_log()
                .lines()
                .filter(|l| l.contains(" nftpol::flow: "))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let mut lines = flow_lines(&bed);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = flow_lines(&bed);
            if now == lines || Instant::now() > deadline {
                lines = now;
                break;
            }
            lines = now;
        }
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = args.timings_out {
        let metrics = serde_json::json!({
            "mode": mode,
            "pods": placed,
            "setup_seconds": setup.as_secs_f64(),
            "apply_seconds": apply.as_secs_f64(),
            "probe_seconds": probing.as_secs_f64(),
            "daemon_generation": status.generation,
        });
        std::fs::write(&path, format!("{metrics:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A signal must not leave namespaces or the daemon behind.
    if let Err(e) = testbed::cleanup::install_signal_handler() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Probe(args) => probe(args),
        Command::Cleanup => testbed::cleanup::remove_stale().map(|removed| {
            for r in removed {
                println!("removed {r}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
