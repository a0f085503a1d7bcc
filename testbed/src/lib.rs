//! The testbed: a Kubernetes node made of Linux network namespaces, on which nftpol is proven
//! with real packets.
//!
//! A crate of its own, so that the product library never ships it: nftpol's kernel tests and
//! benches take it as a dev-dependency, and it uses nftpol's library for the model and the
//! manifest loader.
//!
//! - [`netns`]: RAII network namespaces, veth pairs, bridges, running code inside a namespace.
//!   Small and self-contained: other kernel tests reuse it.
//! - [`cleanup`]: the process-wide registry that deletes what is left on SIGINT/SIGTERM.
//! - [`topology`]: a node namespace and one namespace per pod, bridged or routed.
//! - [`listen`] and [`probe`]: servers in every pod and concurrent probes of every pair
//!   (TCP connect, UDP echo, SCTP INIT over raw sockets, see [`sctp`]).
//! - [`manifests`] and [`daemon`]: the watched folder and the real `nftpol run` in the node.
//! - [`engine`]: [`Testbed`], all of the above behind `new`, `apply` and `probe_matrix`.

pub mod cleanup;
pub mod daemon;
pub mod dns;
pub mod echo;
pub mod engine;
pub mod kube;
pub mod listen;
pub mod manifests;
pub mod netns;
pub mod probe;
pub mod sctp;
pub mod topology;

pub use engine::{Engine, NODE_NAME, Testbed};
pub use probe::{Matrix, Mismatch, cell, diff_off_diagonal};
pub use topology::Mode;
