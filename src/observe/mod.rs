//! What operators see: [`metrics`] (Prometheus metrics, `/livez` and `/readyz`), [`nflog`] (the
//! packets the ruleset logs to an NFLOG group) and [`flowlog`] (those packets as log lines naming
//! pods and policies).

pub mod flowlog;
pub mod metrics;
pub mod nflog;
