//! Reload on change: watches the pipelines directory and reloads once it has been
//! quiet for `watch_debounce`.
//!
//! The directory is watched, not its files, because editors save by writing a new
//! file and renaming it over the old one. Its parent is watched too, for the directory
//! entry itself: when the pipelines directory is a symbolic link that is swapped to a
//! new target (as Kubernetes does with a mounted ConfigMap, or a deploy with
//! `ln -sfn`), the watch is set up again on the new target before the reload.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::supervisor::Supervisor;

/// Starts watching `dir`; the task ends when `stop` turns true.
pub fn spawn(
    supervisor: Arc<Supervisor>,
    dir: &Path,
    debounce: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, notify::Error> {
    let dir = std::path::absolute(dir).map_err(notify::Error::io)?;
    let parent = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    // Only the fact that something changed matters: one pending signal is enough.
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let relevant = dir.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reading the files (as a reload does) is not a change.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            Ok(event) if event.paths.iter().any(|p| p.starts_with(&relevant)) => {
                let _ = changed.try_send(());
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "Watching the pipelines directory failed."),
        })?;
    watcher.watch(&parent, RecursiveMode::NonRecursive)?;
    watch_dir(&mut watcher, &dir);
    let mut watched = identity(&dir);
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                event = changes.recv() => if event.is_none() { return },
                _ = stop.changed() => return,
            }
            // Wait until the directory has been quiet for `debounce`.
            loop {
                tokio::select! {
                    _ = changes.recv() => continue,
                    () = tokio::time::sleep(debounce) => break,
                    _ = stop.changed() => return,
                }
            }
            debug!(dir = %dir.display(), "Pipelines directory changed.");
            let now = identity(&dir);
            if now != watched {
                // The path leads to another directory now (a swapped link).
                watch_dir(&mut watcher, &dir);
                watched = now;
            }
            supervisor.reload("watch").await;
        }
    }))
}

/// Which directory the path leads to now (device and inode), if any.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// (Re)starts the watch on the directory, wherever its path leads now.
fn watch_dir(watcher: &mut notify::RecommendedWatcher, dir: &Path) {
    let _ = watcher.unwatch(dir);
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        warn!(dir = %dir.display(), error = %e, "Cannot watch the pipelines directory; changes to its entry are still watched.");
    }
}
