//! The engine between the sources and the kernel: [`event_loop`] is the one loop of `run` and
//! `daemon`, which takes source events, flow logs, signals and timers from one channel;
//! [`state`] is what differs per source (the manifest folder read whole, the Kubernetes API
//! folded in by [`reconcile`] update by update); [`enforce`] programs each resulting ruleset
//! through a [`crate::dataplane::Dataplane`] with retry, backoff and drift repair.

pub mod enforce;
pub mod event_loop;
pub mod reconcile;
pub mod state;
