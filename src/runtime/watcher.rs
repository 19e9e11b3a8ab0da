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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::supervisor::Supervisor;
use crate::component::{Backoff, Component};
use crate::shutdown::Stopping;

/// Starts watching `dir`; the task ends when `stop` turns true. A watch that cannot
/// be set up (the directory is missing, no inotify watches left) is tried again with
/// backoff, reported as the service's part `watcher` meanwhile; reload with SIGHUP or
/// the admin API works all along.
pub fn spawn(
    supervisor: Arc<Supervisor>,
    dir: &Path,
    debounce: Duration,
    stop: Stopping,
) -> JoinHandle<()> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let health = supervisor.components.get("watcher");
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            match watch_until_stopped(&supervisor, &dir, debounce, &stop, &health).await {
                Ok(()) => return,
                Err(e) => {
                    health.stalled(&format!("watching {}: {e}", dir.display()));
                    tokio::select! {
                        () = tokio::time::sleep(backoff.wait()) => {}
                        () = stop.wait() => return,
                    }
                }
            }
        }
    })
}

/// Watches `dir` and reloads after each quiet change, until `stop` (`Ok`) or the
/// watch cannot be set up.
async fn watch_until_stopped(
    supervisor: &Supervisor,
    dir: &Path,
    debounce: Duration,
    stop: &Stopping,
    health: &Component,
) -> Result<(), notify::Error> {
    let parent = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf());
    // Only the fact that something changed matters: one pending signal is enough.
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let relevant = dir.to_path_buf();
    let events = health.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reading the files (as a reload does) is not a change.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            Ok(event) if event.paths.iter().any(|p| p.starts_with(&relevant)) => {
                let _ = changed.try_send(());
            }
            Ok(_) => {}
            Err(e) => events.degraded(&format!("watching the pipelines directory: {e}")),
        })?;
    watcher.watch(&parent, RecursiveMode::NonRecursive)?;
    watch_dir(&mut watcher, dir, health);
    let mut watched = identity(dir);
    loop {
        tokio::select! {
            event = changes.recv() => if event.is_none() { return Ok(()) },
            () = stop.wait() => return Ok(()),
        }
        // Wait until the directory has been quiet for `debounce`.
        loop {
            tokio::select! {
                _ = changes.recv() => continue,
                () = tokio::time::sleep(debounce) => break,
                () = stop.wait() => return Ok(()),
            }
        }
        debug!(dir = %dir.display(), "Pipelines directory changed.");
        let now = identity(dir);
        if now != watched {
            // The path leads to another directory now (a swapped link).
            watch_dir(&mut watcher, dir, health);
            watched = now;
        }
        supervisor.reload("watch").await;
    }
}

/// Which directory the path leads to now (device and inode), if any.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// (Re)starts the watch on the directory, wherever its path leads now. If that fails,
/// changes to the directory's entry are still watched, and the next one tries again.
fn watch_dir(watcher: &mut notify::RecommendedWatcher, dir: &Path, health: &Component) {
    let _ = watcher.unwatch(dir);
    match watcher.watch(dir, RecursiveMode::Recursive) {
        Ok(()) => health.recovered(),
        Err(e) => health.degraded(&format!("watching {}: {e}", dir.display())),
    }
}
