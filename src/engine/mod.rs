//! The engine between the sources and the kernel: [`reconcile`] folds source events into the
//! index and the incremental compiler and yields node plans; [`enforce`] programs each plan
//! through a [`crate::dataplane::Dataplane`] with retry, backoff and drift repair.

pub mod enforce;
pub mod reconcile;
