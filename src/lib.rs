//! nftpol: Kubernetes NetworkPolicy enforcement with nftables.
//!
//! The tree follows the data, one way:
//!
//! - [`source`]: where cluster state comes from: the Kubernetes API watchers and manifest files
//!   (with their folder watcher), both reporting [`source::Event`]s into a [`source::Sink`].
//! - [`policy`]: the pure core: validated domain types, conversion from the wire format, the
//!   index of cluster state, the compiler that turns it into each local pod's desired state, and
//!   the verdicts that `simulate` and `explain` answer from that same state. No I/O, no `unsafe`.
//! - [`engine`]: the one event loop that `run` and `daemon` share ([`engine::event_loop`]): a
//!   [`engine::event_loop::StateSource`] per source turns events into the ruleset to enforce
//!   (the API's incrementally, through the reconciler), and the enforcer programs it through a
//!   [`dataplane::Dataplane`], with retry, backoff and drift repair.
//! - [`dataplane`]: the kernel: the ruleset model, its nft rendering, the netlink programming and
//!   diffing, conntrack; every `unsafe` FFI call lives in [`dataplane::sys`].
//! - [`observe`]: what operators see: Prometheus metrics, health, the HTTP server, NFLOG and the
//!   flow log.
//! - [`cli`]: argument parsing and wiring only.

pub mod cli;
pub mod dataplane;
pub mod engine;
pub mod observe;
pub mod policy;
pub mod source;
