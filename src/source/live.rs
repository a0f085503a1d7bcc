//! One-shot reads of the live cluster, for the kubectl plugin (`nftpol kubectl explain` and
//! `simulate`): every kind of [`KINDS`] is listed through the user's own credentials and the
//! objects go through the manifest loader ([`super::manifest::load_values`]), which converts
//! them with the same `policy::convert` functions as the daemon's watchers. A new kind is one
//! line of [`KINDS`] once the manifest loader knows it.
//!
//! Reads only, with the least the question needs: a [`Scope::Namespaces`] read gets those
//! namespaces and lists pods and policies in them only, so that a user with rights in a few
//! namespaces can ask about them. A 403 becomes a [`LiveError::Forbidden`] naming the verb,
//! the resource and the namespace that are missing.

use std::collections::BTreeSet;
use std::fmt;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt};

use super::manifest::{self, Loaded};

/// How a kind is read for a [`Scope::Namespaces`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoping {
    /// The Namespace objects themselves: `get` each one asked about.
    Namespace,
    /// Listed in each namespace asked about.
    Namespaced,
    /// Cluster-scoped: always listed whole (a cluster-scoped policy may apply anywhere).
    Cluster,
}

/// One kind the plugin reads.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub kind: &'static str,
    /// The API group, "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub scoping: Scoping,
    /// A kind whose API is not served (a CRD not installed) reads as no objects.
    pub optional: bool,
}

/// Everything a verdict depends on, as the daemon watches it (`super::kube`).
#[rustfmt::skip]
pub const KINDS: &[Kind] = &[
    Kind { kind: "Namespace", group: "", version: "v1", plural: "namespaces", scoping: Scoping::Namespace, optional: false },
    Kind { kind: "Pod", group: "", version: "v1", plural: "pods", scoping: Scoping::Namespaced, optional: false },
    Kind { kind: "NetworkPolicy", group: "networking.k8s.io", version: "v1", plural: "networkpolicies", scoping: Scoping::Namespaced, optional: false },
    // The cluster tiers, where their CRDs are installed: ClusterNetworkPolicy at the first of
    // its versions that lists anything (both are served during a migration), then the
    // v1alpha1 kinds.
    Kind { kind: "ClusterNetworkPolicy", group: "policy.networking.k8s.io", version: "v1beta1", plural: "clusternetworkpolicies", scoping: Scoping::Cluster, optional: true },
    Kind { kind: "ClusterNetworkPolicy", group: "policy.networking.k8s.io", version: "v1alpha2", plural: "clusternetworkpolicies", scoping: Scoping::Cluster, optional: true },
    Kind { kind: "AdminNetworkPolicy", group: "policy.networking.k8s.io", version: "v1alpha1", plural: "adminnetworkpolicies", scoping: Scoping::Cluster, optional: true },
    Kind { kind: "BaselineAdminNetworkPolicy", group: "policy.networking.k8s.io", version: "v1alpha1", plural: "baselineadminnetworkpolicies", scoping: Scoping::Cluster, optional: true },
];

impl Kind {
    fn resource(&self) -> ApiResource {
        let api_version = if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version,
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// `pods`, or `networkpolicies.networking.k8s.io`, as `kubectl auth can-i` spells it.
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// What to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (needs cluster-wide list rights).
    All,
    /// These namespaces only.
    Namespaces(BTreeSet<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The user lacks a permission (HTTP 403).
    #[error("{}", forbidden_text(.verb, .resource, .namespace.as_deref(), .message))]
    Forbidden {
        verb: &'static str,
        resource: String,
        /// `None`: cluster-wide (or a cluster-scoped resource).
        namespace: Option<String>,
        /// What the API server said.
        message: String,
    },
    #[error("namespace {0:?} does not exist")]
    NoNamespace(String),
    #[error("{verb} {resource}{}: {}", in_namespace(.namespace.as_deref()), api_text(.source))]
    Api {
        verb: &'static str,
        resource: String,
        namespace: Option<String>,
        source: kube::Error,
    },
    /// The objects read do not load (the manifest loader's own error).
    #[error(transparent)]
    Load(#[from] manifest::LoadError),
}

/// The API server's own message, without kube's debug dump of the status.
fn api_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

fn in_namespace(ns: Option<&str>) -> String {
    ns.map(|n| format!(" in namespace {n:?}"))
        .unwrap_or_default()
}

fn forbidden_text(verb: &str, resource: &str, ns: Option<&str>, message: &str) -> String {
    let (where_, flag) = match ns {
        Some(ns) => (format!(" in namespace {ns:?}"), format!(" -n {ns}")),
        None if verb == "list" => (" cluster-wide".into(), " --all-namespaces".into()),
        // A cluster-scoped object.
        None => (String::new(), String::new()),
    };
    format!(
        "permission denied: you may not {verb} {resource}{where_} (check with `kubectl auth can-i {verb} {resource}{flag}`); \
         the API server said: {message}"
    )
}

impl LiveError {
    fn of(verb: &'static str, kind: &Kind, namespace: Option<&str>, error: kube::Error) -> Self {
        Self::from_api(verb, &kind.resource_name(), namespace, error)
    }

    /// An API call's error, as `kubectl auth can-i` names what it needed: `verb` on
    /// `resource` (`pods`, `pods/log`, `networkpolicies.networking.k8s.io`) in `namespace`
    /// (`None`: cluster-wide).
    pub fn from_api(
        verb: &'static str,
        resource: &str,
        namespace: Option<&str>,
        error: kube::Error,
    ) -> Self {
        let namespace = namespace.map(str::to_string);
        let resource = resource.to_string();
        match error {
            kube::Error::Api(status) if status.code == 403 => LiveError::Forbidden {
                verb,
                resource,
                namespace,
                message: status.message.clone(),
            },
            source => LiveError::Api {
                verb,
                resource,
                namespace,
                source,
            },
        }
    }

    pub fn is_forbidden(&self) -> bool {
        matches!(self, LiveError::Forbidden { .. })
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The object as a manifest document: list items carry no kind or apiVersion.
fn document(kind: &Kind, obj: DynamicObject) -> serde_json::Value {
    let mut v = serde_json::to_value(&obj).unwrap_or(serde_json::Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("kind".into(), kind.kind.into());
        map.insert("apiVersion".into(), kind.resource().api_version.into());
    }
    v
}

/// Pages through one list call; `Ok(None)` when the kind is optional and not served.
async fn list(
    api: Api<DynamicObject>,
    kind: &Kind,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>, LiveError> {
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(e) if kind.optional && is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(LiveError::of("list", kind, namespace, e)),
        };
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// Reads one kind in `scope`.
async fn read(
    client: &Client,
    kind: &Kind,
    scope: &Scope,
) -> Result<Vec<DynamicObject>, LiveError> {
    let ar = kind.resource();
    let namespaces = match (scope, kind.scoping) {
        (Scope::All, _) | (_, Scoping::Cluster) => {
            return list(Api::all_with(client.clone(), &ar), kind, None).await;
        }
        (Scope::Namespaces(names), _) => names,
    };
    let mut out = Vec::new();
    for ns in namespaces {
        match kind.scoping {
            Scoping::Namespace => {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                match api.get(ns).await {
                    Ok(obj) => out.push(obj),
                    Err(e) if is_not_found(&e) => return Err(LiveError::NoNamespace(ns.clone())),
                    // RBAC can grant `get` on one namespace by name: say which.
                    Err(e) => {
                        let resource = format!("{}/{ns}", kind.resource_name());
                        return Err(LiveError::from_api("get", &resource, None, e));
                    }
                }
            }
            _ => {
                let api = Api::namespaced_with(client.clone(), ns, &ar);
                out.extend(list(api, kind, Some(ns)).await?);
            }
        }
    }
    Ok(out)
}

/// The cluster state in `scope`, as the manifest loader makes it of the same objects.
pub async fn load(client: &Client, scope: &Scope) -> Result<Loaded, LiveError> {
    let mut docs = Vec::new();
    let mut found = BTreeSet::new();
    let mut unreadable = Vec::new();
    for kind in KINDS {
        if found.contains(kind.kind) {
            continue; // already read at an earlier version
        }
        let objects = match read(client, kind, scope).await {
            Ok(objects) => objects,
            // An optional kind the user may not list: answer without it, and say so.
            Err(e) if kind.optional && e.is_forbidden() => {
                unreadable.push(format!("{e}: the answer leaves out every {}", kind.kind));
                continue;
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(kind = kind.kind, count = objects.len(), "read");
        if !objects.is_empty() {
            found.insert(kind.kind);
        }
        docs.extend(objects.into_iter().map(|o| document(kind, o)));
    }
    // Messages about an object name its origin as the loader names a file.
    let mut loaded = manifest::load_values("cluster", docs)?;
    loaded.warnings.extend(unreadable);
    Ok(loaded)
}

/// Pods found by address anywhere in the cluster (a field selector, so only the matches come
/// back): where `explain --to IP` must look.
pub async fn namespaces_of_ip(
    client: &Client,
    ip: std::net::IpAddr,
) -> Result<BTreeSet<String>, LiveError> {
    let kind = KINDS
        .iter()
        .find(|k| k.kind == "Pod")
        .expect("KINDS lists Pod");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
    let params = ListParams::default().fields(&format!("status.podIP={ip}"));
    let pods = api
        .list(&params)
        .await
        .map_err(|e| LiveError::of("list", kind, None, e))?;
    Ok(pods.items.iter().filter_map(|p| p.namespace()).collect())
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => write!(f, "all namespaces"),
            Scope::Namespaces(n) => {
                write!(f, "namespace{} ", if n.len() == 1 { "" } else { "s" })?;
                let names: Vec<&str> = n.iter().map(String::as_str).collect();
                write!(f, "{}", names.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_names_the_verb_the_resource_and_the_namespace() {
        let e = LiveError::Forbidden {
            verb: "list",
            resource: KINDS[2].resource_name(),
            namespace: Some("shop".into()),
            message: "nope".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("may not list networkpolicies.networking.k8s.io in namespace \"shop\""),
            "{text}"
        );
        assert!(text.contains("kubectl auth can-i list networkpolicies.networking.k8s.io -n shop"));
        let e = LiveError::Forbidden {
            verb: "get",
            resource: format!("{}/shop", KINDS[0].resource_name()),
            namespace: None,
            message: "nope".into(),
        };
        let text = e.to_string();
        let want =
            "may not get namespaces/shop (check with `kubectl auth can-i get namespaces/shop`)";
        assert!(text.contains(want), "{text}");
        let e = LiveError::Forbidden {
            verb: "list",
            resource: KINDS[1].resource_name(),
            namespace: None,
            message: "nope".into(),
        };
        let text = e.to_string();
        let want = "may not list pods cluster-wide (check with `kubectl auth can-i list pods --all-namespaces`)";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn documents_carry_kind_and_api_version_and_load() {
        let pod: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]},
        }))
        .unwrap();
        let np: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .unwrap();
        let docs = vec![document(&KINDS[1], pod), document(&KINDS[2], np)];
        assert_eq!(docs[1]["apiVersion"], "networking.k8s.io/v1");
        let loaded = manifest::load_values("cluster", docs).unwrap();
        assert_eq!(loaded.state.pods.len(), 1);
        assert_eq!(loaded.state.policies.len(), 1);
        assert_eq!(loaded.state.namespaces.len(), 1, "implied from the pod");
    }
}
