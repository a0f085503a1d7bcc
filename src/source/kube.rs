//! The Kubernetes API source: kube-runtime watchers on Namespaces, Pods, NetworkPolicies and
//! Nodes (cluster-wide: peers may live anywhere), the cluster policy kinds while their CRDs
//! are installed ([`super::cluster_policy`]), plus a slow `get` of the own Node, turned into
//! [`Update`]s, reported as [`super::Event::Update`]. [`start`] runs them on a tokio runtime
//! and reports [`super::Event::Stopped`] if they ever end.
//!
//! Objects are converted to the compact model on arrival, so nothing but the fields the
//! compiler uses (labels, addresses, ports, nodeName, hostNetwork, phase) is kept. A watcher's
//! restart (first list, relist after 410 Gone or an outage) is buffered until it is complete
//! and reported as one [`Change::Relisted`], so that a relist of 10,000 objects is one update
//! and deletions missed during an outage show up as absent objects.
//!
//! An object that does not convert (an edit nftpol cannot enforce) is reported once and keeps
//! its last valid version until it is fixed or deleted, whether it arrives in a watch update
//! or in a relist: dropping it would open the pods its last version protected. Deletions
//! always apply, by the key in the object's metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::{Change, Listing, Sink, Update};
use crate::policy::convert::{self, InvalidObject};
use crate::policy::model::ObjectKey;

/// One object of a watcher event: its key, from metadata (which always converts, so that a
/// deletion applies whatever the object holds), and the object converted, with the warnings
/// the conversion gave, or why it does not convert.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen<T, K> {
    pub key: K,
    pub converted: Result<(T, Vec<InvalidObject>), InvalidObject>,
}

/// What the source says about an object that has problems.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Its current version does not convert: the last valid version, if any, stays in force.
    Invalid(InvalidObject),
    /// It converts, with these warnings.
    Warnings(Vec<InvalidObject>),
}

/// Turns one kind's watcher events into changes, buffering restarts until they are complete.
///
/// One rule for watch updates and relists: an object whose current version does not convert
/// keeps its last valid version (a watch update reports no change; a relist lists its key
/// as present), and only a deletion or its absence from a relist removes it. Problems are
/// reported once per object, again only when they change, so that a relist every few minutes
/// does not repeat them.
#[derive(Debug)]
pub struct Relister<T, K> {
    /// The relist in progress, and the keys in it that have a report standing.
    buffer: Option<(Listing<T, K>, BTreeSet<K>)>,
    /// The last report of each object with problems.
    reported: BTreeMap<K, Report>,
}

impl<T, K> Default for Relister<T, K> {
    fn default() -> Self {
        Self {
            buffer: None,
            reported: BTreeMap::new(),
        }
    }
}

impl<T, K: Ord + Clone> Relister<T, K> {
    /// Feeds one event; returns the change to report, if any. `report` is called for each
    /// problem that was not reported already.
    pub fn feed(
        &mut self,
        event: Event<Seen<T, K>>,
        mut report: impl FnMut(&Report),
    ) -> Option<Change<T, K>> {
        match event {
            Event::Init => {
                self.buffer = Some((Listing::from(Vec::new()), BTreeSet::new()));
                None
            }
            Event::InitApply(seen) => {
                let key = seen.key.clone();
                let converted = self.check(seen, &mut report);
                let (listing, standing) = self
                    .buffer
                    .get_or_insert_with(|| (Listing::from(Vec::new()), BTreeSet::new()));
                match converted {
                    Ok(obj) => listing.objects.push(obj),
                    Err(key) => listing.invalid.push(key),
                }
                if self.reported.contains_key(&key) {
                    standing.insert(key);
                }
                None
            }
            Event::InitDone => {
                let (listing, standing) = self
                    .buffer
                    .take()
                    .unwrap_or_else(|| (Listing::from(Vec::new()), BTreeSet::new()));
                // Objects absent from the relist were deleted: forget what was said of them.
                self.reported.retain(|k, _| standing.contains(k));
                Some(Change::Relisted(listing))
            }
            Event::Apply(seen) => self.check(seen, &mut report).ok().map(Change::Applied),
            Event::Delete(seen) => {
                self.reported.remove(&seen.key);
                Some(Change::Deleted(seen.key))
            }
        }
    }

    /// The object if it converts, else its key; reports what is new.
    fn check(&mut self, seen: Seen<T, K>, report: &mut impl FnMut(&Report)) -> Result<T, K> {
        let (now, out) = match seen.converted {
            Ok((obj, warnings)) if warnings.is_empty() => (None, Ok(obj)),
            Ok((obj, warnings)) => (Some(Report::Warnings(warnings)), Ok(obj)),
            Err(e) => (Some(Report::Invalid(e)), Err(seen.key.clone())),
        };
        match now {
            None => {
                self.reported.remove(&seen.key);
            }
            Some(now) => {
                if self.reported.get(&seen.key) != Some(&now) {
                    report(&now);
                    self.reported.insert(seen.key, now);
                }
            }
        }
        out
    }
}

/// A namespace's key: its name.
pub(super) fn namespace_key(meta: &ObjectMeta) -> Option<String> {
    meta.name.clone().filter(|n| !n.is_empty())
}

/// A namespaced object's key, as [`convert`] makes it.
fn object_key(meta: &ObjectMeta) -> Option<ObjectKey> {
    namespace_key(meta).map(|name| ObjectKey::new(convert::namespace_of(meta), name))
}

/// Converts an event's objects. The API server names every object; one without a name is
/// logged and dropped, since nothing could ever refer to it.
fn convert_event<R: Resource, T, K>(
    kind: &'static str,
    event: Event<R>,
    key: impl Fn(&ObjectMeta) -> Option<K>,
    convert: impl Fn(&R) -> Result<(T, Vec<InvalidObject>), InvalidObject>,
) -> Option<Event<Seen<T, K>>> {
    let seen = |obj: R| {
        let Some(key) = key(obj.meta()) else {
            tracing::error!(kind, "ignoring an object without a name");
            return None;
        };
        let converted = convert(&obj);
        Some(Seen { key, converted })
    };
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(seen(o)?),
        Event::Apply(o) => Event::Apply(seen(o)?),
        Event::Delete(o) => Event::Delete(seen(o)?),
    })
}

/// Logs a problem found in an object, once (see [`Relister`]).
fn log_report(kind: &'static str, report: &Report) {
    match report {
        Report::Invalid(e) => tracing::warn!(
            kind,
            object = %e.object,
            field = %e.field,
            "{e}; its last valid version, if any, stays in force until it is fixed or deleted"
        ),
        Report::Warnings(warnings) => {
            for w in warnings {
                tracing::warn!(kind, object = %w.object, field = %w.field, "{w}");
            }
        }
    }
}

async fn pump<R, T, K, E>(
    kind: &'static str,
    stream: impl Stream<Item = Result<Event<R>, watcher::Error>>,
    key: impl Fn(&ObjectMeta) -> Option<K>,
    convert: impl Fn(&R) -> Result<(T, Vec<InvalidObject>), InvalidObject>,
    wrap: impl Fn(Change<T, K>) -> Update,
    sink: Sink<E>,
) where
    R: Resource,
    K: Ord + Clone,
{
    let changes = sink.clone();
    pump_to(
        kind,
        stream,
        key,
        convert,
        move |change| changes.send(super::Event::Update(wrap(change))),
        sink,
    )
    .await
}

/// Like [`pump`], but the changes go to `emit` (false: stop), and only the watch errors to
/// `sink`, so that a caller can merge several watches into one kind of update
/// ([`super::cluster_policy`]).
pub(super) async fn pump_to<R, T, K, E>(
    kind: &'static str,
    stream: impl Stream<Item = Result<Event<R>, watcher::Error>>,
    key: impl Fn(&ObjectMeta) -> Option<K>,
    convert: impl Fn(&R) -> Result<(T, Vec<InvalidObject>), InvalidObject>,
    mut emit: impl FnMut(Change<T, K>) -> bool,
    sink: Sink<E>,
) where
    R: Resource,
    K: Ord + Clone,
{
    let mut relister = Relister::default();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                let Some(event) = convert_event(kind, event, &key, &convert) else {
                    continue;
                };
                if let Some(change) = relister.feed(event, |r| log_report(kind, r))
                    && !emit(change)
                {
                    return; // the reconciler is gone: shutting down
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

/// For kinds whose conversion gives no warnings.
fn no_warnings<R, T>(
    convert: impl Fn(&R) -> Result<T, InvalidObject>,
) -> impl Fn(&R) -> Result<(T, Vec<InvalidObject>), InvalidObject> {
    move |obj| convert(obj).map(|t| (t, Vec::new()))
}

/// A kind's watch: its first state by a streaming list (one watch request whose initial events
/// are the objects, ended by a bookmark; the API server sends them from its watch cache one by
/// one), else, when the API server refuses that request, by pages of a list followed by a
/// watch, for the rest of this watch's life.
///
/// Why streaming first: at 50,000 pods the paged list was most of the time to first
/// enforcement (a hundred consistent pages of 500), and each page is held decoded at once.
/// Servers before 1.27, or with the WatchList feature gate off, reject the request (see
/// [`streaming_refused`]); nothing is missed by falling back, as the list starts from scratch.
/// The streaming list reads the watch cache at any recent version (kube-runtime asks for
/// resourceVersion 0) where the list read it at the latest: a state at most the cache's lag
/// old, which the watch events that follow bring up to date, as they would after the list.
pub(super) fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    struct Watch<K: 'static> {
        api: Api<K>,
        config: watcher::Config,
        stream: BoxStream<'static, Result<Event<K>, watcher::Error>>,
        streaming: bool,
    }
    let stream = watcher::watcher(api.clone(), config.clone().streaming_lists())
        .default_backoff()
        .boxed();
    let start = Watch {
        api,
        config,
        stream,
        streaming: true,
    };
    futures::stream::unfold(start, |mut w| async move {
        loop {
            let item = w.stream.next().await?;
            match item
                .as_ref()
                .err()
                .filter(|_| w.streaming)
                .and_then(streaming_refused)
            {
                Some(why) => {
                    tracing::info!(
                        resource = %w.api.resource_url(),
                        "the API server refuses streaming lists ({why}): listing, then watching"
                    );
                    w.stream = watcher::watcher(w.api.clone(), w.config.clone())
                        .default_backoff()
                        .boxed();
                    w.streaming = false;
                }
                None => return Some((item, w)),
            }
        }
    })
}

/// Whether a watcher error is an API server saying it cannot serve a streaming list: servers
/// before 1.27 forbid `resourceVersionMatch` on a watch, later ones with the WatchList feature
/// gate off forbid `sendInitialEvents`, both as an invalid request (422; 400 from some
/// proxies). Anything else (403, 5xx, an unreachable server) is retried as it is, as a list
/// would be. Returns the server's message if so.
fn streaming_refused(e: &watcher::Error) -> Option<&str> {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) if matches!(s.code, 400 | 422) => {
            Some(&s.message)
        }
        _ => None,
    }
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
    // Watches are resumed from their last resourceVersion; [`watch`] lists by streaming where
    // the API server can.
    let config = watcher::Config::default();
    let namespaces = pump(
        "Namespace",
        watch(Api::<core::Namespace>::all(client.clone()), config.clone()),
        namespace_key,
        no_warnings(convert::namespace),
        Update::Namespace,
        sink.clone(),
    );
    let pods = pump(
        "Pod",
        watch(Api::<core::Pod>::all(client.clone()), config.clone()),
        object_key,
        no_warnings(convert::pod),
        Update::Pod,
        sink.clone(),
    );
    let policies = pump(
        "NetworkPolicy",
        watch(
            Api::<net::NetworkPolicy>::all(client.clone()),
            config.clone(),
        ),
        object_key,
        convert::policy_with_warnings,
        Update::Policy,
        sink.clone(),
    );
    // Every Node's labels and addresses, for ClusterNetworkPolicy `nodes` peers.
    let nodes = pump(
        "Node",
        watch(Api::<core::Node>::all(client.clone()), config.clone()),
        namespace_key,
        no_warnings(convert::node_checked),
        Update::Node,
        sink.clone(),
    );
    let cluster_policies =
        super::cluster_policy::run(client.clone(), super::cluster_policy::SPEC, sink.clone());
    // The own Node's pod CIDRs change rarely: a slow `get` is enough, and keeps them apart
    // from the Node watch (which converts only what peers need).
    let node_sink = sink.clone();
    let own_node = async move {
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
                Err(e) => {
                    tracing::warn!(kind = "Node", node = %node, "reading the own node: {e}");
                    let update = Update::WatchError {
                        kind: "Node",
                        error: e.to_string(),
                    };
                    if !node_sink.send(super::Event::Update(update)) {
                        return;
                    }
                }
            }
            tokio::time::sleep(NODE_POLL).await;
        }
    };
    tokio::join!(
        namespaces,
        pods,
        policies,
        nodes,
        cluster_policies,
        own_node
    );
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
    use crate::engine::reconcile::Reconciler;
    use crate::policy::model::ObjectKey;

    /// The updates the NetworkPolicy watch reports for these watcher events.
    fn policy_updates(events: Vec<Event<net::NetworkPolicy>>) -> Vec<Update> {
        let (tx, rx) = std::sync::mpsc::channel();
        futures::executor::block_on(pump(
            "NetworkPolicy",
            futures::stream::iter(events.into_iter().map(Ok)),
            object_key,
            convert::policy_with_warnings,
            Update::Policy,
            Sink::new(tx, |e| e),
        ));
        rx.try_iter()
            .filter_map(|e| match e {
                super::super::Event::Update(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn feed(r: &mut Reconciler, events: Vec<Event<net::NetworkPolicy>>) {
        for u in policy_updates(events) {
            r.apply(u);
        }
    }

    fn np(spec: serde_json::Value) -> net::NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x", "resourceVersion": "1"},
            "spec": spec,
        }))
        .expect("a NetworkPolicy")
    }

    /// A policy that stops converting (someone's bad edit, a field nftpol cannot enforce)
    /// keeps its last valid version whether the bad version arrives by a watch update or in a
    /// relist, and its deletion applies although it does not convert.
    #[test]
    fn an_object_that_stops_converting_keeps_its_last_valid_version_until_deleted() {
        let valid = np(serde_json::json!({"podSelector": {}}));
        let invalid = np(serde_json::json!({
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "not a cidr"}}]}],
        }));
        let key = ObjectKey::new("x", "p");
        let mut r = Reconciler::new("node-1");
        feed(
            &mut r,
            vec![Event::Init, Event::InitApply(valid), Event::InitDone],
        );
        let last_valid = r.index().policy(&key).cloned();
        assert!(last_valid.is_some());

        feed(&mut r, vec![Event::Apply(invalid.clone())]);
        assert_eq!(r.index().policy(&key), last_valid.as_ref(), "watch update");

        let relist = || {
            vec![
                Event::Init,
                Event::InitApply(invalid.clone()),
                Event::InitDone,
            ]
        };
        feed(&mut r, relist());
        assert_eq!(r.index().policy(&key), last_valid.as_ref(), "relist");

        feed(&mut r, vec![Event::Delete(invalid.clone())]);
        assert_eq!(r.index().policy(&key), None, "delete");

        // Gone from a relist is gone, valid or not.
        feed(
            &mut r,
            vec![
                Event::Init,
                Event::InitApply(np(serde_json::json!({"podSelector": {}}))),
                Event::InitDone,
            ],
        );
        feed(&mut r, relist());
        assert!(r.index().policy(&key).is_some());
        feed(&mut r, vec![Event::Init, Event::InitDone]);
        assert_eq!(r.index().policy(&key), None, "absent from a relist");
    }

    #[test]
    fn relists_are_buffered_until_complete() {
        let mut r = Relister::<u32, u32>::default();
        let ok = |v: u32| Seen {
            key: v,
            converted: Ok((v, vec![])),
        };
        let mut feed = |e| r.feed(e, |_| panic!("nothing to report"));
        assert_eq!(feed(Event::Apply(ok(1))), Some(Change::Applied(1)));
        assert_eq!(feed(Event::Init), None);
        assert_eq!(feed(Event::InitApply(ok(2))), None);
        assert_eq!(feed(Event::InitApply(ok(3))), None);
        assert_eq!(
            feed(Event::InitDone),
            Some(Change::Relisted(vec![2, 3].into()))
        );
        assert_eq!(feed(Event::Delete(ok(3))), Some(Change::Deleted(3)));
        // A relist of nothing is still a relist: everything was deleted.
        assert_eq!(feed(Event::Init), None);
        assert_eq!(feed(Event::InitDone), Some(Change::Relisted(vec![].into())));
    }

    fn invalid(object: &str, message: &str) -> InvalidObject {
        InvalidObject {
            kind: "NetworkPolicy",
            object: object.into(),
            field: "spec".into(),
            message: message.into(),
        }
    }

    /// Problems are reported when they appear or change, not at every relist or update; an
    /// invalid object is listed by its key; a deleted one is forgotten.
    #[test]
    fn each_problem_is_reported_once() {
        let mut r = Relister::<u32, u32>::default();
        let mut reports = Vec::new();
        let bad = |v: u32, why: &str| Seen {
            key: v,
            converted: Err(invalid(&v.to_string(), why)),
        };
        let warned = |v: u32, why: &str| Seen {
            key: v,
            converted: Ok((v, vec![invalid(&v.to_string(), why)])),
        };
        let ok = |v: u32| Seen {
            key: v,
            converted: Ok((v, vec![])),
        };
        let mut feed = |e| r.feed(e, |rep: &Report| reports.push(rep.clone()));
        let relist = |objects: Vec<Seen<u32, u32>>| {
            let mut events = vec![Event::Init];
            events.extend(objects.into_iter().map(Event::InitApply));
            events.push(Event::InitDone);
            events
        };
        let mut changes = Vec::new();
        for _ in 0..3 {
            for e in relist(vec![bad(1, "a"), warned(2, "w"), ok(3)]) {
                changes.extend(feed(e));
            }
        }
        assert_eq!(
            changes,
            vec![
                Change::Relisted(Listing {
                    objects: vec![2, 3],
                    invalid: vec![1]
                });
                3
            ]
        );
        assert_eq!(feed(Event::Apply(bad(1, "a"))), None);
        assert_eq!(feed(Event::Apply(warned(2, "w"))), Some(Change::Applied(2)));
        // A different problem is reported.
        assert_eq!(feed(Event::Apply(bad(1, "b"))), None);
        // Fixed, then broken again: reported again.
        assert_eq!(feed(Event::Apply(ok(2))), Some(Change::Applied(2)));
        assert_eq!(feed(Event::Apply(warned(2, "w"))), Some(Change::Applied(2)));
        // Deleted (whatever it holds), or absent from a relist: forgotten.
        assert_eq!(feed(Event::Delete(bad(1, "b"))), Some(Change::Deleted(1)));
        for e in relist(vec![ok(3)]) {
            feed(e);
        }
        assert_eq!(feed(Event::Apply(bad(1, "b"))), None);
        assert_eq!(feed(Event::Apply(warned(2, "w"))), Some(Change::Applied(2)));
        assert_eq!(
            reports,
            [
                Report::Invalid(invalid("1", "a")),
                Report::Warnings(vec![invalid("2", "w")]),
                Report::Invalid(invalid("1", "b")),
                Report::Warnings(vec![invalid("2", "w")]),
                Report::Invalid(invalid("1", "b")),
                Report::Warnings(vec![invalid("2", "w")]),
            ]
        );
    }

    /// A fake API server for [`watch`]: answers a streaming list with `streaming` (a status
    /// code, and the watch events if 200), a plain list with one pod, and records each
    /// request's query.
    fn fake_api(
        streaming: (u16, &'static str),
    ) -> (
        Api<core::Pod>,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"n","resourceVersion":"5"}}"#;
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let query = req.uri().query().unwrap_or_default().to_string();
            log.lock().expect("the request log").push(query.clone());
            let (code, body) = if query.contains("sendInitialEvents=true") {
                match streaming {
                    (200, events) => (200, events.replace("POD", pod)),
                    (code, _) => (
                        code,
                        format!(
                            r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","code":{code},"reason":"Invalid","message":"sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"}}"#
                        ),
                    ),
                }
            } else if query.contains("watch=true") {
                (200, String::new()) // the watch after a list: no changes
            } else {
                (
                    200,
                    format!(
                        r#"{{"apiVersion":"v1","kind":"PodList","metadata":{{"resourceVersion":"5"}},"items":[{pod}]}}"#
                    ),
                )
            };
            async move {
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(body.into_bytes()))
            }
        });
        let client = Client::new(service, "default");
        (Api::all(client), seen)
    }

    /// The first `n` items of [`watch`] on [`fake_api`], as names: `init`, `apply <pod>`,
    /// `done`, or the error; and the queries the fake server was sent.
    fn first_items(streaming: (u16, &'static str), n: usize) -> (Vec<String>, Vec<String>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // The client's request buffer is a task: it needs the runtime from its start.
        let (api, seen) = runtime.block_on(async { fake_api(streaming) });
        let items = runtime.block_on(async {
            watch(api, watcher::Config::default())
                .take(n)
                .map(|item| match item {
                    Ok(Event::Init) => "init".to_string(),
                    Ok(Event::InitApply(p)) => {
                        format!("apply {}", p.metadata.name.unwrap_or_default())
                    }
                    Ok(Event::InitDone) => "done".to_string(),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("error {e}"),
                })
                .collect()
                .await
        });
        let seen = seen.lock().expect("the request log").clone();
        (items, seen)
    }

    #[test]
    fn a_server_with_streaming_lists_is_not_listed() {
        let events = concat!(
            r#"{"type":"ADDED","object":POD}"#,
            "\n",
            r#"{"type":"BOOKMARK","object":{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"6","annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
            "\n"
        );
        let (items, seen) = first_items((200, events), 3);
        assert_eq!(items, ["init", "apply a", "done"]);
        assert!(
            seen.iter().all(|q| q.contains("sendInitialEvents=true")),
            "{seen:?}"
        );
    }

    /// Kubernetes before 1.27, or with the WatchList feature gate off: the refusal is not an
    /// error of the watch, and the objects come from a list.
    #[test]
    fn a_server_that_refuses_streaming_lists_is_listed_instead() {
        let (items, seen) = first_items((422, ""), 3);
        assert_eq!(items, ["init", "apply a", "done"]);
        assert!(seen[0].contains("sendInitialEvents=true"), "{seen:?}");
        assert!(!seen[1].contains("watch=true"), "{seen:?}");
    }

    /// Forbidden (RBAC not yet granted) says nothing about streaming: the error is reported and
    /// streaming is what gets retried.
    #[test]
    fn other_errors_are_reported_as_they_are() {
        let (items, seen) = first_items((403, ""), 1);
        assert!(items[0].starts_with("error "), "{items:?}");
        assert_eq!(seen.len(), 1, "{seen:?}");
    }
}
