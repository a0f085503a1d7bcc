//! The file source: reads Namespaces, Pods, NetworkPolicies, ClusterNetworkPolicies (and the
//! v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy) and Nodes from YAML or JSON
//! manifests (files, multi-document YAML, `kind: List`, or folders of such files) into a
//! `ClusterState`.
//!
//! Unusable input (a file that does not parse, an invalid pod or namespace, the same object
//! twice) is a [`LoadError`]. An invalid NetworkPolicy or cluster policy is reported in
//! [`Loaded::invalid`] and skipped, so that the valid policies still apply. Other kinds are
//! ignored with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::de::DeserializeOwned;

use crate::policy::convert::{self, InvalidObject};
use crate::policy::model::ClusterState;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: InvalidObject },
    #[error("{kind} {object} is defined twice: in {first} and in {second}")]
    Duplicate {
        kind: &'static str,
        object: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no manifest files (.yaml, .yml, .json) found in {}", .0.display())]
    Empty(PathBuf),
}

/// A policy that was reported and skipped.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub error: InvalidObject,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub state: ClusterState,
    /// Ignored kinds, fields kept although invalid (see `convert`), and similar notes, one line
    /// each.
    pub warnings: Vec<String>,
    /// Invalid policies, skipped.
    pub invalid: Vec<Skipped>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The files `load` reads for these paths, in the order it reads them.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| LoadError::Io {
                    path: path.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_manifest(p))
                // Editors and atomic writers leave hidden temporaries behind.
                .filter(|p| {
                    !p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// A digest of the files `load` would read (names and contents): equal digests mean equal input.
/// `nftpol run` reports the digest of what it enforces, so that a caller can wait for a change.
pub fn fingerprint(paths: &[PathBuf]) -> std::io::Result<String> {
    let files = files(paths).map_err(|e| match e {
        LoadError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.file_name().hash(&mut hasher);
        std::fs::read(&f)?.hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// Parses one file into JSON documents (YAML streams may hold several).
fn documents(path: &Path, text: &str) -> Result<Vec<serde_json::Value>, LoadError> {
    let parse = |message: String| LoadError::Parse {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| parse(format!("invalid JSON: {e}")))?;
        return Ok(vec![v]);
    }
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| parse(format!("invalid YAML: {e}")))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn object_name(v: &serde_json::Value) -> String {
    let meta = &v["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_string(),
        _ => "<unnamed>".to_string(),
    }
}

/// Deserializes a Kubernetes object, naming the field that does not fit.
fn typed<T: DeserializeOwned>(
    path: &Path,
    kind: &'static str,
    v: serde_json::Value,
) -> Result<T, LoadError> {
    let object = object_name(&v);
    serde_path_to_error::deserialize(v).map_err(|e| LoadError::Invalid {
        path: path.to_path_buf(),
        error: InvalidObject {
            kind,
            object,
            field: e.path().to_string(),
            message: e.inner().to_string(),
        },
    })
}

#[derive(Default)]
struct Builder {
    loaded: Loaded,
    seen: BTreeMap<(&'static str, String), PathBuf>,
}

impl Builder {
    fn once(&mut self, kind: &'static str, object: String, path: &Path) -> Result<(), LoadError> {
        if let Some(first) = self.seen.insert((kind, object.clone()), path.to_path_buf()) {
            return Err(LoadError::Duplicate {
                kind,
                object,
                first,
                second: path.to_path_buf(),
            });
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, v: serde_json::Value) -> Result<(), LoadError> {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let invalid = |error| LoadError::Invalid {
            path: path.to_path_buf(),
            error,
        };
        match kind.as_str() {
            "List"
            | "NamespaceList"
            | "PodList"
            | "NetworkPolicyList"
            | "NodeList"
            | "ClusterNetworkPolicyList"
            | "AdminNetworkPolicyList"
            | "BaselineAdminNetworkPolicyList" => {
                let items = match v.get("items") {
                    Some(serde_json::Value::Array(items)) => items.clone(),
                    Some(serde_json::Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(LoadError::Parse {
                            path: path.to_path_buf(),
                            message: format!("{kind}.items must be a list"),
                        });
                    }
                };
                let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
                for mut item in items {
                    // Typed lists may leave out each item's kind.
                    if let (Some(k), Some(obj)) = (item_kind, item.as_object_mut()) {
                        obj.entry("kind").or_insert_with(|| k.into());
                    }
                    self.add(path, item)?;
                }
            }
            "Namespace" => {
                let ns: core::Namespace = typed(path, "Namespace", v)?;
                let ns = convert::namespace(&ns).map_err(invalid)?;
                self.once("Namespace", ns.name.clone(), path)?;
                self.loaded.state.namespaces.push(ns);
            }
            "Pod" => {
                let pod: core::Pod = typed(path, "Pod", v)?;
                let pod = convert::pod(&pod).map_err(invalid)?;
                self.once("Pod", pod.key.to_string(), path)?;
                self.loaded.state.pods.push(pod);
            }
            "NetworkPolicy" => {
                let np: Result<net::NetworkPolicy, _> = typed(path, "NetworkPolicy", v);
                let np = match np {
                    Ok(np) => np,
                    Err(LoadError::Invalid { path, error }) => {
                        self.loaded.invalid.push(Skipped { path, error });
                        return Ok(());
                    }
                    Err(other) => return Err(other),
                };
                let object = format!(
                    "{}/{}",
                    convert::namespace_of(&np.metadata),
                    np.metadata.name.clone().unwrap_or_default()
                );
                self.once("NetworkPolicy", object, path)?;
                match convert::policy_with_warnings(&np) {
                    Ok((p, warnings)) => {
                        let path = path.display();
                        let warnings = warnings.iter().map(|w| format!("{path}: {w}"));
                        self.loaded.warnings.extend(warnings);
                        self.loaded.state.policies.push(p);
                    }
                    Err(error) => self.loaded.invalid.push(Skipped {
                        path: path.to_path_buf(),
                        error,
                    }),
                }
            }
            "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
                let object = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let once_kind = match kind.as_str() {
                    "ClusterNetworkPolicy" => "ClusterNetworkPolicy",
                    "AdminNetworkPolicy" => "AdminNetworkPolicy",
                    _ => "BaselineAdminNetworkPolicy",
                };
                self.once(once_kind, object, path)?;
                match convert::cluster_policy_with_warnings(&v) {
                    Ok((p, warnings)) => {
                        let path = path.display();
                        let warnings = warnings.iter().map(|w| format!("{path}: {w}"));
                        self.loaded.warnings.extend(warnings);
                        self.loaded.state.cluster_policies.push(p);
                    }
                    Err(error) => self.loaded.invalid.push(Skipped {
                        path: path.to_path_buf(),
                        error,
                    }),
                }
            }
            "Node" => {
                let node: core::Node = typed(path, "Node", v)?;
                let node = convert::node_checked(&node).map_err(invalid)?;
                self.once("Node", node.name.clone(), path)?;
                self.loaded.state.nodes.push(node);
            }
            "" => {
                return Err(LoadError::Parse {
                    path: path.to_path_buf(),
                    message: format!("object {} has no kind", object_name(&v)),
                });
            }
            other => self.loaded.warnings.push(format!(
                "{}: ignoring {other} {}",
                path.display(),
                object_name(&v)
            )),
        }
        Ok(())
    }

    fn finish(mut self) -> Loaded {
        let state = &mut self.loaded.state;
        let mut known: std::collections::BTreeSet<String> =
            state.namespaces.iter().map(|n| n.name.clone()).collect();
        let used: Vec<String> = state
            .pods
            .iter()
            .map(|p| p.key.namespace.clone())
            .chain(state.policies.iter().map(|p| p.key.namespace.clone()))
            .collect();
        for ns in used {
            if known.insert(ns.clone()) {
                state.namespaces.push(convert::implied_namespace(&ns));
            }
        }
        state.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        state.pods.sort_by(|a, b| a.key.cmp(&b.key));
        state.policies.sort_by(|a, b| a.key.cmp(&b.key));
        state.cluster_policies.sort_by(|a, b| a.key.cmp(&b.key));
        state.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.loaded
    }
}

/// Loads every manifest under `paths`.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, LoadError> {
    let files = files(paths)?;
    if files.is_empty()
        && let Some(p) = paths.first()
    {
        return Err(LoadError::Empty(p.clone()));
    }
    let mut b = Builder::default();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        for doc in documents(&path, &text)? {
            b.add(&path, doc)?;
        }
    }
    Ok(b.finish())
}

/// Loads from an in-memory list of documents (tests, the corpus), as if from one file.
pub fn load_values(
    name: &str,
    docs: impl IntoIterator<Item = serde_json::Value>,
) -> Result<Loaded, LoadError> {
    let mut b = Builder::default();
    let path = PathBuf::from(name);
    for doc in docs {
        b.add(&path, doc)?;
    }
    Ok(b.finish())
}
