//! `nftpol kubectl flows`: the flow log lines of the nftpol pods (their container logs, read
//! through the API server's `pods/log`), filtered by node and by the namespace of the pods in
//! the line, parsed by `crate::observe::flowlog::LoggedLine`. Without `--follow`, the lines of
//! every node are merged in time order; with it, they are printed as they come.

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;

use super::{Daemons, name_of, node_of};
use crate::observe::flowlog::LoggedLine;
use crate::source::live::LiveError;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub daemons: Daemons,
    /// Only the nftpol pod of this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines newer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub since: Option<i64>,
}

/// A flow line of `node`, as printed.
pub fn format_line(node: &str, line: &LoggedLine) -> String {
    format!("{node}  {}  {}", line.timestamp, line.message)
}

/// The flow lines of `text` that pass the namespace filter.
pub fn select<'a, I>(text: I, namespace: Option<&'a str>) -> impl Iterator<Item = LoggedLine> + 'a
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: 'a,
{
    text.into_iter()
        .filter_map(LoggedLine::parse)
        .filter(move |l| namespace.is_none_or(|ns| l.involves_namespace(ns)))
}

/// `namespace`: only lines with a pod of it on either end (the global `-n`).
pub async fn execute(
    client: kube::Client,
    args: Args,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let mut pods = args.daemons.pods(&client).await?;
    if let Some(node) = &args.node {
        pods.retain(|p| node_of(p) == node);
        anyhow::ensure!(!pods.is_empty(), "no nftpol pod on node {node:?}");
    }
    let ns = args.daemons.nftpol_namespace.as_str();
    let api: kube::Api<Pod> = kube::Api::namespaced(client, ns);
    let params = |pod: &Pod| LogParams {
        // The DaemonSet's one container; the first one if it has several.
        container: pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone()),
        follow: args.follow,
        since_seconds: args.since,
        ..Default::default()
    };
    let denied = |e| LiveError::from_api("get", "pods/log", Some(ns), e);
    let filter = namespace;
    if !args.follow {
        let mut lines = Vec::new();
        let mut failed = 0;
        for pod in &pods {
            let text = match api.logs(name_of(pod), &params(pod)).await.map_err(denied) {
                Ok(text) => text,
                // The same for every node: say it once, as the error.
                Err(e) if e.is_forbidden() => return Err(e.into()),
                // One node's kubelet being unreachable leaves the others readable.
                Err(e) => {
                    eprintln!("warning: {}: {e}", node_of(pod));
                    failed += 1;
                    continue;
                }
            };
            lines.extend(select(text.lines(), filter).map(|l| (node_of(pod).to_string(), l)));
        }
        anyhow::ensure!(failed < pods.len(), "no nftpol pod's log could be read");
        // RFC 3339 in UTC sorts as text.
        lines.sort_by(|a, b| a.1.timestamp.cmp(&b.1.timestamp));
        for (node, line) in lines {
            println!("{}", format_line(&node, &line));
        }
        return Ok(());
    }
    let mut streams = Vec::new();
    for pod in &pods {
        let node = node_of(pod).to_string();
        let reader = api
            .log_stream(name_of(pod), &params(pod))
            .await
            .map_err(denied)?;
        streams.push(reader.lines().map_ok(move |l| (node.clone(), l)).boxed());
    }
    let mut all = futures::stream::select_all(streams);
    while let Some(item) = all.next().await {
        let (node, text) = item?;
        if let Some(line) = select([text.as_str()], filter).next() {
            println!("{}", format_line(&node, &line));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_filtered_by_the_namespace_of_either_pod() {
        let log = r#"2026-11-29T10:00:00.000001Z  INFO nftpol::engine: applied generation=3
2026-11-29T10:00:01.000001Z  INFO nftpol::flow: TCP drop shop/web (10.0.0.3) -> db/pg (10.0.0.2:5432): dropped: isolated for ingress by db/deny, and no ingress rule of it allows it action="drop" direction="ingress" src=10.0.0.3 src_pod="shop/web" dst=10.0.0.2 dst_pod="db/pg" protocol=TCP port=5432 pod="db/pg" policies=db/deny
{"timestamp":"2026-11-29T10:00:02.000001Z","level":"INFO","message":"UDP audit 10.9.9.9 -> x/y (10.0.0.7:53): would be dropped","action":"audit","direction":"ingress","src":"10.9.9.9","src_pod":"","dst":"10.0.0.7","dst_pod":"x/y","protocol":"UDP","port":53,"pod":"x/y","policies":"x/p","target":"nftpol::flow"}"#;
        let all: Vec<LoggedLine> = select(log.lines(), None).collect();
        assert_eq!(all.len(), 2);
        let shop: Vec<LoggedLine> = select(log.lines(), Some("shop")).collect();
        assert_eq!(shop.len(), 1);
        assert_eq!(shop[0].policies, "db/deny");
        assert_eq!(select(log.lines(), Some("db")).count(), 1);
        let x: Vec<LoggedLine> = select(log.lines(), Some("x")).collect();
        assert_eq!(
            format_line("node-b", &x[0]),
            "node-b  2026-11-29T10:00:02.000001Z  UDP audit 10.9.9.9 -> x/y (10.0.0.7:53): would be dropped"
        );
        assert_eq!(select(log.lines(), Some("nope")).count(), 0);
    }
}
