//! The engine between the sources and the kernel: [`reconcile`] folds source events into the
//! index and the incremental compiler and yields node plans; [`enforce`] programs each plan
//! through a [`crate::dataplane::Driver`] with retry, backoff and drift repair, writing the
//! [`status`] file and, with `--strict`, running the [`strict`] conntrack sweep; [`signals`]
//! turns SIGTERM and SIGINT into events.

#![deny(unsafe_code)]

pub mod enforce;
pub mod reconcile;
pub mod signals;
pub mod status;
pub mod strict;
