//! Asking tasks to stop: the owner of some tasks holds a [`Shutdown`] and hands each of
//! them a [`Stopping`]; [`Shutdown::stop`] reaches every one, also a task that looks
//! only later. Every long-running task of the service takes one.

use tokio::sync::watch;

/// The owner's side: asks its tasks to stop.
pub struct Shutdown(watch::Sender<bool>);

/// A task's side: tells whether it was asked to stop, and waits for it.
#[derive(Clone, Debug)]
pub struct Stopping(watch::Receiver<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every task holding one of this shutdown's [`Stopping`] to stop.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// What a task holds to learn that it should stop.
    pub fn stopping(&self) -> Stopping {
        Stopping(self.0.subscribe())
    }
}

impl Stopping {
    /// Whether the task was asked to stop.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the task is asked to stop (at once if it was).
    pub async fn wait(&self) {
        let mut stop = self.0.clone();
        // The owner dropped its side without asking: that too means stop.
        let _ = stop.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_looks_late_still_sees_the_stop() {
        let shutdown = Shutdown::new();
        let early = shutdown.stopping();
        assert!(!early.is_stopping());
        shutdown.stop();
        let late = shutdown.stopping();
        assert!(late.is_stopping() && early.is_stopping());
        early.wait().await;
        late.wait().await;
    }
}
