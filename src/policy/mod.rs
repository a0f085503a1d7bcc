//! The policy core: cluster state in, desired state out, and nothing else. Pure: no I/O, no
//! clocks, no `unsafe`, so every semantic decision is tested without a kernel or an API server.
//!
//! - [`model`]: validated domain types (no Kubernetes wire format).
//! - [`convert`]: k8s-openapi objects to the model, with field-level errors.
//! - [`domain`]: `domainNames` matching and the learned addresses' TTL clamp.
//! - [`index`]: the cluster state and its label and address lookups.
//! - [`intervals`]: merged address and port intervals.
//! - [`compile`]: the policy compiler (full and incremental).
//! - [`verdict`]: connection verdicts and their explanation.
#![forbid(unsafe_code)]

pub mod cnp_api;
pub mod compile;
pub mod convert;
pub mod domain;
pub mod index;
pub mod intervals;
pub mod model;
pub mod verdict;
