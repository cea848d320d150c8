//! Work that must finish even when the request that started it does not: the native
//! disconnect, start to finish (once the orchestrator is asked, its answer is either written
//! to the row or journaled). It runs on a runtime of the gateway's own, not Pingora's, so a
//! client hanging up or Pingora dropping its runtimes at shutdown cannot cut it in half;
//! `main` waits for it (bounded) before the process exits. Running the whole route here, not
//! just its tail, also keeps its database and orchestrator sockets on this runtime's reactor:
//! a request crosses threads twice, not at every query.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;

pub struct Durable {
    /// Built on first use, so it is created after Pingora's daemonizing fork.
    runtime: OnceLock<Runtime>,
    threads: usize,
    tracker: TaskTracker,
}

impl Durable {
    /// A runtime of `threads` worker threads (at least one).
    pub fn new(threads: usize) -> Durable {
        Durable {
            runtime: OnceLock::new(),
            threads: threads.max(1),
            tracker: TaskTracker::new(),
        }
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .thread_name("durable")
                .enable_all()
                .build()
                .expect("the durable runtime builds")
        })
    }

    /// Runs `task` to completion on the durable runtime and returns its output; if the caller
    /// is dropped meanwhile, the task still completes.
    pub async fn run<F>(&self, task: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.runtime().spawn(self.tracker.track_future(task));
        match handle.await {
            Ok(output) => Some(output),
            Err(e) => {
                tracing::error!(error = %e, "durable task failed");
                None
            }
        }
    }

    /// Spawns a long-running background task (not waited for at exit).
    pub fn spawn_background<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime().spawn(task);
    }

    /// Waits up to `limit` for every task started by [`Durable::run`] to finish.
    /// Returns how many were still running at the deadline.
    pub fn drain(&self, limit: Duration) -> usize {
        self.tracker.close();
        let Some(runtime) = self.runtime.get() else {
            return 0;
        };
        // The timer must be created inside the runtime.
        let _ = runtime.block_on(async { tokio::time::timeout(limit, self.tracker.wait()).await });
        self.tracker.len()
    }
}
