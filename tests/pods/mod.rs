//! The small clusters the testbed tests share: pods as `(namespace, name, IPv4)` placed on the
//! testbed's node, and reading one sample out of a `/metrics` scrape.

#![allow(dead_code)]

use nftpol_testbed::NODE_NAME;
use serde_json::{Value, json};

pub const CLIENT: (&str, &str, &str) = ("x", "client", "10.244.1.2");
pub const SERVER: (&str, &str, &str) = ("x", "server", "10.244.1.3");
pub const OTHER: (&str, &str, &str) = ("y", "other", "10.244.2.4");

/// A running pod on the testbed's node, labelled `app: <name>`, declaring TCP `ports` (the
/// testbed listens on a pod's declared ports).
pub fn pod((ns, name, ip): (&str, &str, &str), ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"containerPort": p})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
    })
}

/// The value of the sample `name` (with its labels, as exposed), if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
