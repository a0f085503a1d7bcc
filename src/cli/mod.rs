//! Command-line subcommands: one file each, parsing done by clap in `main.rs`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 unusable input (see [`InputError`]).

pub mod cleanup;
pub mod daemon;
pub mod explain;
pub mod render;
pub mod run;
pub mod simulate;

/// Input the command cannot use at all (exit code 2), as opposed to a runtime failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

use std::path::PathBuf;

use crate::manifest::{self, Loaded};

/// Loads manifests for a command: unusable input becomes an [`InputError`]; warnings and
/// skipped invalid policies are reported on stderr.
pub fn load_input(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let loaded = manifest::load(paths).map_err(|e| InputError(e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    for skipped in &loaded.invalid {
        eprintln!("error: skipping invalid policy: {skipped}");
    }
    Ok(loaded)
}
