//! nftpol: Kubernetes NetworkPolicy enforcement with nftables.
//!
//! The data flows one way: sources (manifest files, later the Kubernetes API) feed the
//! [`index`]; the pure [`compile`] step turns the index into the desired state of each pod
//! endpoint of a node; [`verdict`] answers `simulate` and `explain` from that same state; the
//! [`dataplane`] programs it into the kernel as one atomic nftables transaction.
//!
//! - [`model`]: validated domain types (no Kubernetes wire format).
//! - [`convert`]: k8s-openapi objects to the model, with field-level errors.
//! - [`manifest`]: reading YAML/JSON manifests from files and folders.
//! - [`index`]: the cluster state and its lookups.
//! - [`intervals`]: merged address and port intervals.
//! - [`compile`]: the policy compiler.
//! - [`verdict`]: connection verdicts and their explanation.
//! - [`metrics`]: the Prometheus metrics and health probes of `run` and `daemon`.
//! - [`conntrack`]: the conntrack table through ctnetlink (`--strict` cuts connections).
//! - [`nflog`]: reading the packets the ruleset logs to an NFLOG group.
//! - [`flowlog`]: those packets as log lines naming the pods and policies.

pub mod cli;
pub mod compile;
pub mod conntrack;
pub mod convert;
pub mod dataplane;
pub mod enforce;
pub mod flowlog;
pub mod index;
pub mod intervals;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod nflog;
pub mod reconcile;
pub mod source;
pub mod testbed;
pub mod verdict;
