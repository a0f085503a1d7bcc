//! The engine between the sources and the kernel: [`event_loop`] is the one loop of `run` and
//! `daemon`, which takes source events, flow logs, signals and timers from one channel;
//! [`state`] is what differs per source (the manifest folder read whole, the Kubernetes API
//! folded in by [`reconcile`] update by update); [`enforce`] programs each resulting ruleset
//! through a [`crate::dataplane::Driver`] with retry, backoff and drift repair, writing the
//! [`status`] file and, with `--strict`, running the [`strict`] conntrack sweep; [`signals`]
//! turns SIGTERM and SIGINT into events; [`dns`] reads the DNS answers held for
//! `domainNames` rules and learns their addresses.

#![deny(unsafe_code)]

pub mod dns;
pub mod enforce;
pub mod event_loop;
pub mod reconcile;
pub mod signals;
pub mod state;
pub mod status;
pub mod strict;
