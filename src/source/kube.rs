//! The Kubernetes API source: kube-runtime watchers on Namespaces, Pods and NetworkPolicies
//! (cluster-wide: peers may live anywhere) plus a slow `get` of the own Node, turned into
//! [`Update`]s, reported as [`super::Event::Update`]. [`start`] runs them on a tokio runtime
//! and reports [`super::Event::Stopped`] if they ever end.
//!
//! Objects are converted to the compact model on arrival, so nothing but the fields the
//! compiler uses (labels, addresses, ports, nodeName, hostNetwork, phase) is kept. A watcher's
//! restart (first list, relist after 410 Gone or an outage) is buffered until it is complete
//! and reported as one [`Change::Relisted`], so that a relist of 10,000 objects is one update
//! and deletions missed during an outage show up as absent objects.

use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::{Change, Sink, Update};
use crate::policy::convert::{self, InvalidObject};

/// Turns one kind's watcher events into changes, buffering restarts until they are complete.
#[derive(Debug)]
pub struct Relister<T> {
    buffer: Option<Vec<T>>,
}

impl<T> Default for Relister<T> {
    fn default() -> Self {
        Self { buffer: None }
    }
}

impl<T> Relister<T> {
    /// Feeds one event (already converted); returns the change to report, if any.
    pub fn feed<K>(&mut self, event: Event<T>, key: impl Fn(&T) -> K) -> Option<Change<T, K>> {
        match event {
            Event::Init => {
                self.buffer = Some(Vec::new());
                None
            }
            Event::InitApply(obj) => {
                self.buffer.get_or_insert_with(Vec::new).push(obj);
                None
            }
            Event::InitDone => Some(Change::Relisted(self.buffer.take().unwrap_or_default())),
            Event::Apply(obj) => Some(Change::Applied(obj)),
            Event::Delete(obj) => Some(Change::Deleted(key(&obj))),
        }
    }
}

/// Converts an event's objects; the ones that do not convert are logged and dropped (a
/// deletion still goes through: its key is all that matters).
fn convert_event<K, T>(
    event: Event<K>,
    convert: impl Fn(&K) -> Result<T, InvalidObject>,
) -> Vec<Event<T>> {
    let one = |obj: &K| match convert(obj) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!("not enforced: {e}");
            None
        }
    };
    match event {
        Event::Init => vec![Event::Init],
        Event::InitDone => vec![Event::InitDone],
        Event::InitApply(o) => one(&o).map(Event::InitApply).into_iter().collect(),
        Event::Apply(o) => one(&o).map(Event::Apply).into_iter().collect(),
        Event::Delete(o) => one(&o).map(Event::Delete).into_iter().collect(),
    }
}

async fn pump<K, T, Key, E>(
    kind: &'static str,
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    convert: impl Fn(&K) -> Result<T, InvalidObject>,
    key: impl Fn(&T) -> Key + Copy,
    wrap: impl Fn(Change<T, Key>) -> Update,
    sink: Sink<E>,
) {
    let mut relister = Relister::default();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                for event in convert_event(event, &convert) {
                    if let Some(change) = relister.feed(event, key)
                        && !sink.send(super::Event::Update(wrap(change)))
                    {
                        return; // the reconciler is gone: shutting down
                    }
                }
            }
            Err(e) => {
                tracing::warn!(kind, "watch failed, retrying: {e}");
                let update = Update::WatchError {
                    kind,
                    error: e.to_string(),
                };
                if !sink.send(super::Event::Update(update)) {
                    return;
                }
            }
        }
    }
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// How often the own Node is read again.
const NODE_POLL: Duration = Duration::from_secs(60);

/// A burst of updates (a relist, a rollout) is cut after this long even if updates keep
/// coming.
pub const MAX_COALESCE: Duration = Duration::from_millis(250);

/// Runs the watchers on `runtime` until the receiving side hangs up; if they end otherwise (a
/// panic), reports [`super::Event::Stopped`]. `node` is this node's name.
pub fn start<E: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    client: Client,
    node: String,
    sink: Sink<E>,
) {
    let watches = runtime.spawn(run(client, node, sink.clone()));
    runtime.spawn(async move {
        // The watchers retry forever; ending means a panic or a closed channel (then this
        // send fails too, and nobody is left to tell).
        let _ = watches.await;
        sink.send(super::Event::Stopped("the API watches"));
    });
}

/// Runs the watchers until the receiving side hangs up. `node` is this node's name.
async fn run<E: Send + 'static>(client: Client, node: String, sink: Sink<E>) {
    // Watches are resumed from their last resourceVersion; the default list-then-watch
    // strategy works with every API server version (streaming lists need 1.27).
    let config = watcher::Config::default();
    let namespaces = pump(
        "Namespace",
        watch(Api::<core::Namespace>::all(client.clone()), config.clone()),
        convert::namespace,
        |n: &crate::policy::model::Namespace| n.name.clone(),
        Update::Namespace,
        sink.clone(),
    );
    let pods = pump(
        "Pod",
        watch(Api::<core::Pod>::all(client.clone()), config.clone()),
        convert::pod,
        |p: &crate::policy::model::Pod| p.key.clone(),
        Update::Pod,
        sink.clone(),
    );
    let policies = pump(
        "NetworkPolicy",
        watch(
            Api::<net::NetworkPolicy>::all(client.clone()),
            config.clone(),
        ),
        convert::policy,
        |p: &crate::policy::model::Policy| p.key.clone(),
        Update::Policy,
        sink.clone(),
    );
    // The own Node is read with `get` (least privilege: no list/watch on nodes); its pod
    // CIDRs change rarely, so a slow poll is enough.
    let node_sink = sink.clone();
    let nodes = async move {
        let api = Api::<core::Node>::all(client);
        let mut last = None;
        loop {
            match api.get(&node).await {
                Ok(n) => {
                    let cidrs = node_pod_cidrs(&n);
                    if last.as_ref() != Some(&cidrs) {
                        last = Some(cidrs.clone());
                        if !node_sink.send(super::Event::Update(Update::NodePodCidrs(cidrs))) {
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!(kind = "Node", node = %node, "reading the own node: {e}"),
            }
            tokio::time::sleep(NODE_POLL).await;
        }
    };
    tokio::join!(namespaces, pods, policies, nodes);
}

/// spec.podCIDRs (or the older spec.podCIDR); unparsable entries are logged and skipped.
pub fn node_pod_cidrs(node: &core::Node) -> Vec<ipnet::IpNet> {
    let spec = node.spec.as_ref();
    let listed: Vec<String> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|v| !v.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    listed
        .iter()
        .filter_map(|c| match c.parse::<ipnet::IpNet>() {
            Ok(n) => Some(n.trunc()),
            Err(_) => {
                tracing::error!("node has an invalid pod CIDR {c:?}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relists_are_buffered_until_complete() {
        let mut r = Relister::<u32>::default();
        let key = |v: &u32| *v;
        assert_eq!(r.feed(Event::Apply(1), key), Some(Change::Applied(1)));
        assert_eq!(r.feed(Event::Init, key), None);
        assert_eq!(r.feed(Event::InitApply(2), key), None);
        assert_eq!(r.feed(Event::InitApply(3), key), None);
        assert_eq!(
            r.feed(Event::InitDone, key),
            Some(Change::Relisted(vec![2, 3]))
        );
        assert_eq!(r.feed(Event::Delete(3), key), Some(Change::Deleted(3)));
        // A relist of nothing is still a relist: everything was deleted.
        assert_eq!(r.feed(Event::Init, key), None);
        assert_eq!(r.feed(Event::InitDone, key), Some(Change::Relisted(vec![])));
    }
}
