//! Daemon benchmark against a real kube-apiserver (`hack/bench-daemon.sh` starts one and sets
//! `NFTPOL_E2E_STATE`; without it this prints a note and exits).
//!
//! 1. Policy change to enforcement: a node with 200 local pods in a cluster of 1,000 pods and
//!    200 policies; 200 policy updates, one at a time, each timed from the API write (client
//!    clock) to the daemon's commit (`applied_at_unix_ms` in its status file, same clock).
//! 2. The new-pod window: a pod gets its address (status patch) and its rules are committed.
//! 3. Resident memory and idle CPU of the daemon with 10,000 pods and 2,000 policies.
//!
//! Prints p50/p99 and ratios to the targets; asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NODE: &str = "bench-node";

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn status(path: &Path) -> Option<(u64, u128)> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((
        v["generation"].as_u64()?,
        v["applied_at_unix_ms"].as_u64()? as u128,
    ))
}

/// Polls the status file until its generation passes `after`; returns the commit time.
fn wait_generation(path: &Path, after: u64, timeout: Duration) -> anyhow::Result<(u64, u128)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((g, at)) = status(path)
            && g > after
        {
            return Ok((g, at));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no apply after generation {after}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn pod(ns: &str, name: &str, node: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none",
                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .expect("pod")
}

fn policy(ns: &str, name: &str, app: &str, port: u16) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": app}},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "app-1"}}}],
                              "ports": [{"port": port}]}]}
    }))
    .expect("policy")
}

/// Creates `pods` pods over `namespaces` namespaces, every `local_every`-th on this node, with
/// `policies` policies, through the API with some concurrency, and gives each pod an address.
async fn populate(
    client: &kube::Client,
    tag: &str,
    namespaces: usize,
    pods: usize,
    policies: usize,
    local_every: usize,
) -> anyhow::Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    for n in 0..namespaces {
        let name = format!("{tag}-{n}");
        // The API server adds the kubernetes.io/metadata.name label itself.
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        nss.create(&PostParams::default(), &ns).await?;
    }
    let jobs = (0..pods).map(|i| {
        let client = client.clone();
        let tag = tag.to_string();
        async move {
            let ns = format!("{tag}-{}", i % namespaces);
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let node = if i % local_every == 0 {
                NODE.to_string()
            } else {
                format!("node-{}", i % 97)
            };
            let name = format!("p{i}");
            api.create(
                &PostParams::default(),
                &pod(&ns, &name, &node, &format!("app-{}", i % 10)),
            )
            .await?;
            let ip = format!(
                "10.{}.{}.{}",
                100 + i / 65_000,
                (i / 250) % 256,
                i % 250 + 1
            );
            let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
                .await?;
            anyhow::Ok(())
        }
    });
    let results: Vec<_> = stream::iter(jobs).buffer_unordered(24).collect().await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let jobs = (0..policies).map(|i| {
        let client = client.clone();
        let tag = tag.to_string();
        async move {
            let ns = format!("{tag}-{}", i % namespaces);
            let api: Api<NetworkPolicy> = Api::namespaced(client, &ns);
            api.create(
                &PostParams::default(),
                &policy(&ns, &format!("np{i}"), &format!("app-{}", i % 10), 8080),
            )
            .await?;
            anyhow::Ok(())
        }
    });
    let results: Vec<_> = stream::iter(jobs).buffer_unordered(24).collect().await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

struct Daemon {
    child: Child,
    status: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(netns: &str, kubeconfig: &Path, dir: &Path, tag: &str) -> anyhow::Result<Daemon> {
    let status = dir.join("bench-status.json");
    let _ = std::fs::remove_file(&status);
    let log = std::fs::File::create(dir.join(format!("bench-daemon-{tag}.log")))?;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            env!("CARGO_BIN_EXE_nftpol"),
            "daemon",
        ])
        .args(["--node-name", NODE, "--resync-interval", "3600"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--status-file")
        .arg(&status)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(Daemon { child, status })
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let cpu = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / ticks)
        .unwrap_or(0.0);
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    (cpu, rss_kib)
}

/// The daemon's own pid (the child is `ip netns exec`, which execs nftpol: same pid).
fn daemon_pid(d: &Daemon) -> u32 {
    d.child.id()
}

fn main() -> anyhow::Result<()> {
    let Some(state) = std::env::var_os("NFTPOL_E2E_STATE").map(PathBuf::from) else {
        println!("skipping: run hack/bench-daemon.sh (needs a real API server)");
        return Ok(());
    };
    let netns = std::env::var("NFTPOL_BENCH_NETNS")?;
    let kubeconfig = PathBuf::from(std::env::var("NFTPOL_BENCH_KUBECONFIG")?);
    let admin = state.join("kubeconfig");
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&admin)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        anyhow::Ok(kube::Client::try_from(config)?)
    })?;

    // 1. 1,000 pods (200 local), 200 policies.
    let t = Instant::now();
    rt.block_on(populate(&client, "lat", 50, 1000, 200, 5))?;
    println!(
        "created 1,000 pods and 200 policies in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let d = start_daemon(&netns, &kubeconfig, &state, "latency")?;
    let (mut generation, _) = wait_generation(&d.status, 0, Duration::from_secs(120))?;
    let mut delays = Vec::new();
    for i in 0..200usize {
        // Policies of namespaces with local pods (every fifth), each toggled between two ports.
        let k = (i * 5) % 50;
        let (ns, name) = (format!("lat-{k}"), format!("np{k}"));
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let port = if (i / 10) % 2 == 0 { 9090 } else { 8080 };
        let mut p = policy(&ns, &name, &format!("app-{}", k % 10), port);
        p.metadata.resource_version = rt.block_on(api.get(&name))?.metadata.resource_version;
        let written = now_ms();
        rt.block_on(api.replace(&name, &PostParams::default(), &p))?;
        let (g, at) = wait_generation(&d.status, generation, Duration::from_secs(30))?;
        generation = g;
        delays.push(at.saturating_sub(written) as f64);
    }
    let (p50, p99) = (percentile(&mut delays, 0.5), percentile(&mut delays, 0.99));
    println!(
        "policy change -> enforced (API write to kernel commit), 200 changes, 200 local pods of 1,000, 200 policies: p50 {p50:.1} ms, p99 {p99:.1} ms (p99 / 100 ms target = {:.3})",
        p99 / 100.0
    );

    // 2. New-pod window: a local pod selected by a policy gets its address.
    let mut windows = Vec::new();
    let api: Api<Pod> = Api::namespaced(client.clone(), "lat-0");
    for i in 0..100usize {
        let name = format!("new{i}");
        rt.block_on(api.create(&PostParams::default(), &pod("lat-0", &name, NODE, "app-0")))?;
        // The new pod is counted as skipped (no address yet): let that apply pass first.
        let (g, _) = wait_generation(&d.status, generation, Duration::from_secs(5))
            .unwrap_or((generation, 0));
        let ip = format!("10.99.{}.{}", i / 250, i % 250 + 1);
        let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        let written = now_ms();
        rt.block_on(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st)))?;
        let (g2, at) = wait_generation(&d.status, g, Duration::from_secs(30))?;
        generation = g2;
        windows.push(at.saturating_sub(written) as f64);
    }
    let (w50, w99) = (
        percentile(&mut windows, 0.5),
        percentile(&mut windows, 0.99),
    );
    println!(
        "new-pod window (address in the API to rules committed), 100 pods: p50 {w50:.1} ms, p99 {w99:.1} ms"
    );
    drop(d);

    // 3. 10,000 pods and 2,000 policies in the API (9,000 more pods, 1,800 more policies).
    let t = Instant::now();
    rt.block_on(populate(&client, "big", 450, 9000, 1800, 50))?;
    println!(
        "created 9,000 more pods and 1,800 more policies in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let d = start_daemon(&netns, &kubeconfig, &state, "scale")?;
    let t = Instant::now();
    wait_generation(&d.status, 0, Duration::from_secs(300))?;
    let sync = t.elapsed();
    let pid = daemon_pid(&d);
    let (cpu0, _) = proc_stat(pid);
    let idle = Duration::from_secs(20);
    let t = Instant::now();
    while t.elapsed() < idle {
        std::thread::sleep(Duration::from_millis(500));
    }
    let (cpu1, rss) = proc_stat(pid);
    let idle_cpu = (cpu1 - cpu0) / idle.as_secs_f64() * 100.0;
    let rss_mib = rss as f64 / 1024.0;
    println!(
        "10,000 pods and 2,000 policies: first sync {:.2} s; resident memory {rss_mib:.1} MiB (/100 MiB target = {:.3}); idle CPU {idle_cpu:.2}% of a core over {idle:?} (/2% target = {:.3})",
        sync.as_secs_f64(),
        rss_mib / 100.0,
        idle_cpu / 2.0
    );
    Ok(())
}
