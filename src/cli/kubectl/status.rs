//! `nftpol kubectl status`: one row per nftpol pod (one per node): Ready from the pod's
//! status, the rest from its /metrics read through the API server's proxy
//! (`pods/proxy`; the DaemonSet runs on the host network, so the pod's address is the node's),
//! summarised by `crate::observe::metrics::Summary`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;

use super::{Daemons, name_of, node_of};
use crate::observe::metrics::Summary;
use crate::source::live::LiveError;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub daemons: Daemons,
    /// The metrics port when the pod declares no container port named `metrics`.
    #[arg(long, default_value_t = 9964)]
    pub metrics_port: u16,
}

/// Nodes scraped at the same time.
const CONCURRENT_SCRAPES: usize = 16;

/// How long one node's scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub node: String,
    pub pod: String,
    pub ready: bool,
    /// The scrape, or why there is none.
    pub metrics: Result<Summary, String>,
    /// Why /readyz says the node is not ready (asked when the pod is not Ready).
    pub unready_because: Option<String>,
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container port named `metrics`, else `fallback`.
fn metrics_port(pod: &Pod, fallback: u16) -> u16 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("metrics"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(fallback)
}

/// GET `path` of the pod's port through the API server's proxy.
async fn proxied(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<String, kube::Error> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path}");
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await
}

async fn scrape(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<String, String> {
    let call = proxied(client, namespace, pod, port, "metrics");
    match tokio::time::timeout(SCRAPE_TIMEOUT, call).await {
        Err(_) => Err(format!("no answer within {}s", SCRAPE_TIMEOUT.as_secs())),
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(LiveError::from_api("get", "pods/proxy", Some(namespace), e).to_string()),
    }
}

/// The reason /readyz gives (its 503 body), if it answers.
async fn unready_reason(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Option<String> {
    let call = proxied(client, namespace, pod, port, "readyz");
    match tokio::time::timeout(SCRAPE_TIMEOUT, call).await {
        Ok(Err(kube::Error::Api(status))) if status.code == 503 => {
            Some(status.message.trim().to_string())
        }
        _ => None,
    }
}

pub async fn execute(client: kube::Client, args: Args) -> anyhow::Result<()> {
    let pods = args.daemons.pods(&client).await?;
    let namespace = &args.daemons.nftpol_namespace;
    // A few nodes at a time: a big cluster's table must not open a connection per node at
    // once through the API server.
    let rows: Vec<Row> = futures::stream::iter(pods.iter().map(|pod| {
        let client = client.clone();
        async move {
            let port = metrics_port(pod, args.metrics_port);
            let metrics = scrape(&client, namespace, name_of(pod), port)
                .await
                .map(|text| Summary::parse(&text));
            let ready = pod_ready(pod);
            let unready_because = match (&metrics, ready) {
                (Ok(_), false) => unready_reason(&client, namespace, name_of(pod), port).await,
                _ => None,
            };
            Row {
                node: node_of(pod).to_string(),
                pod: name_of(pod).to_string(),
                ready,
                metrics,
                unready_because,
            }
        }
    }))
    .buffered(CONCURRENT_SCRAPES)
    .collect()
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    print!("{}", table(&rows, now));
    Ok(())
}

fn count(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn age(then: f64, now: f64) -> String {
    let s = (now - then).max(0.0) as u64;
    let (n, unit) = match s {
        0..60 => (s, "s"),
        60..3600 => (s / 60, "m"),
        3600..86400 => (s / 3600, "h"),
        _ => (s / 86400, "d"),
    };
    format!("{n}{unit} ago")
}

/// The table, with the reasons for missing metrics below it.
pub fn table(rows: &[Row], now: f64) -> String {
    let header = [
        "NODE",
        "POD",
        "READY",
        "LAST APPLY",
        "TRANSACTIONS",
        "FAILURES",
        "NFT ERRORS",
        "DROPPED",
        "AUDIT DROPS",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut notes = Vec::new();
    for r in rows {
        let ready = if r.ready { "yes" } else { "no" }.to_string();
        let rest = match &r.metrics {
            Ok(m) => vec![
                match m.last_apply_unix {
                    None => "-".into(),
                    Some(t) if t <= 0.0 => "never".into(),
                    Some(t) => age(t, now),
                },
                count(m.transactions),
                count(m.dataplane_failures),
                count(m.nft_errors),
                count(Some(m.dropped_packets)),
                count(Some(m.audit_would_drop_packets)),
            ],
            Err(e) => {
                notes.push(format!("{}: no metrics: {e}", r.node));
                vec!["?".into(); 6]
            }
        };
        if let Some(reason) = &r.unready_because {
            notes.push(format!("{}: not ready: {reason}", r.node));
        }
        let mut row = vec![r.node.clone(), r.pod.clone(), ready];
        row.extend(rest);
        cells.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_node_and_says_why_metrics_are_missing() {
        let rows = [
            Row {
                node: "node-a".into(),
                pod: "nftpol-x".into(),
                ready: true,
                metrics: Ok(Summary {
                    last_apply_unix: Some(1000.0),
                    transactions: Some(12.0),
                    dataplane_failures: Some(0.0),
                    nft_errors: Some(1.0),
                    dropped_packets: 42.0,
                    audit_would_drop_packets: 0.0,
                }),
                unready_because: None,
            },
            Row {
                node: "node-b".into(),
                pod: "nftpol-y".into(),
                ready: false,
                metrics: Err("permission denied: you may not get pods/proxy".into()),
                unready_because: None,
            },
            Row {
                node: "node-c".into(),
                pod: "nftpol-z".into(),
                ready: false,
                metrics: Ok(Summary {
                    last_apply_unix: Some(0.0),
                    ..Default::default()
                }),
                unready_because: Some("the first full sync is not done".into()),
            },
        ];
        let text = table(&rows, 1125.0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NODE    POD       READY  LAST APPLY"),
            "{text}"
        );
        let a: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            a,
            [
                "node-a", "nftpol-x", "yes", "2m", "ago", "12", "0", "1", "42", "0"
            ]
        );
        assert!(lines[2].starts_with("node-b  nftpol-y  no     ?"), "{text}");
        let c: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            c,
            ["node-c", "nftpol-z", "no", "never", "-", "-", "-", "0", "0"]
        );
        assert_eq!(
            lines[4],
            "node-b: no metrics: permission denied: you may not get pods/proxy"
        );
        assert_eq!(
            lines[5],
            "node-c: not ready: the first full sync is not done"
        );
    }

    #[test]
    fn the_metrics_port_is_the_named_container_port() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "nftpol", "ports": [
                {"name": "other", "containerPort": 1},
                {"name": "metrics", "containerPort": 9965},
            ]}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        assert_eq!(metrics_port(&pod, 9964), 9965);
        assert!(pod_ready(&pod));
        assert_eq!(metrics_port(&Pod::default(), 9964), 9964);
        assert!(!pod_ready(&Pod::default()));
    }
}
