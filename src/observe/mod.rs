//! What operators see: [`metrics`] (the Prometheus registry and the handles the enforcer
//! updates), [`health`] (the `/livez` and `/readyz` state), [`http`] (the server answering
//! `/metrics`, `/livez` and `/readyz`), [`nflog`] (the packets the ruleset logs to an NFLOG group)
//! and [`flowlog`] (those packets as log lines naming pods and policies). Two collectors run
//! behind every scrape: `drops` (the per-pod drop counters read from the kernel) and `process`
//! (the `process_*` metrics from /proc).

mod drops;
pub mod flowlog;
pub mod flowread;
pub mod health;
pub mod html;
pub mod http;
pub mod metrics;
pub mod nflog;
mod process;

use std::sync::{Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
