//! The manifest folder watcher of `nftpol run`: a `notify` watcher on the folder that reports
//! every change as [`Event::Reload`]. The event loop debounces them (an editor's or
//! `kubectl cp`'s burst of writes is one reload, cut after [`MAX_DEBOUNCE`]) and reads the
//! folder again whole with [`super::manifest`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;

use super::{Event, Sink};

/// A burst of file changes is cut after this long even if files keep changing.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Watches `dir` (not its subfolders) until the returned watcher is dropped.
pub fn watch<E: Send + 'static>(
    dir: &Path,
    sink: Sink<E>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reading a file (our own reload included) changes nothing.
            Ok(e) if e.kind.is_access() => return,
            Ok(_) => {}
            // A missed change is repaired by reading everything again.
            Err(e) => tracing::warn!("file watcher: {e}; reloading"),
        }
        let _ = sink.send(Event::Reload);
    })
    .context("creating the file watcher")?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(watcher)
}
