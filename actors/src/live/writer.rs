//! Closing the store writer tasks (risk events and audit, dispatch instructions, settlement
//! records) at shutdown, so none of them writes after the store is closed.
//!
//! Owns: [`WriterTask`] (the daemon's handle: close then wait) and [`CloseSignal`] (the task's
//! side: a `recv_many` that closes the channel when asked).
//!
//! Invariants:
//! - After [`WriterTask::close`] the channel refuses new records (the producers count and log
//!   the refusal) and the task stores everything that was queued before it ends.
//! - Dropping a `WriterTask` without closing changes nothing: the task keeps running until
//!   every sender is gone (tests that ignore the handle keep their old behaviour).

use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The writer task's side of the close request.
pub struct CloseSignal(Option<oneshot::Receiver<()>>);

impl CloseSignal {
    /// `rx.recv_many`, except that a close request closes `rx` first (what is queued is
    /// still returned; then 0 ends the task).
    pub async fn recv_many<T>(
        &mut self,
        rx: &mut mpsc::Receiver<T>,
        buf: &mut Vec<T>,
        max: usize,
    ) -> usize {
        if let Some(signal) = self.0.as_mut() {
            tokio::select! {
                n = rx.recv_many(buf, max) => return n,
                asked = signal => {
                    self.0 = None;
                    if asked.is_ok() {
                        rx.close();
                    }
                }
            }
        }
        rx.recv_many(buf, max).await
    }
}

/// The daemon's handle on one writer task.
pub struct WriterTask {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl WriterTask {
    /// Spawns `writer(signal)` on the current runtime.
    pub fn spawn<F, Fut>(writer: F) -> Self
    where
        F: FnOnce(CloseSignal) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (close, rx) = oneshot::channel();
        let task = tokio::spawn(writer(CloseSignal(Some(rx))));
        Self { close, task }
    }

    /// Closes the channel and waits (at most `timeout`) until everything queued is stored.
    /// `false` if the task did not finish in time (it is then aborted).
    pub async fn close(self, timeout: Duration) -> bool {
        let _ = self.close.send(());
        let mut task = self.task;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_stores_what_was_queued_then_refuses() {
        let (tx, mut rx) = mpsc::channel::<u32>(8);
        let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = std::sync::Arc::clone(&stored);
        let task = WriterTask::spawn(move |mut signal| async move {
            let mut buf = Vec::new();
            while signal.recv_many(&mut rx, &mut buf, 4).await > 0 {
                out.lock().unwrap().append(&mut buf);
            }
        });
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert!(task.close(Duration::from_secs(5)).await);
        assert_eq!(*stored.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(tx.try_send(9).is_err(), "closed after close()");
    }
}
