//! Session threads: one single-threaded tokio runtime per thread, each
//! session living on one of them from login to goodbye.
//!
//! A session is a strict ping-pong between two sockets, so it gains
//! nothing from work stealing and pays for it: with one multi-threaded
//! runtime, a wake-up from the I/O driver often lands a session on the
//! other worker (a futex wake, a cold cache, a CPU migration). Here each
//! session's socket, buffers and state stay on one thread; a new session
//! goes to the thread with the fewest sessions.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A fixed set of session threads.
///
/// ```
/// let workers = pg_proxy::workers::Workers::start(2).unwrap();
/// let (tx, rx) = std::sync::mpsc::channel();
/// workers.spawn(async move { tx.send(42).unwrap() });
/// assert_eq!(rx.recv().unwrap(), 42);
/// ```
#[derive(Debug)]
pub struct Workers {
    threads: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
    /// Dropping it ends the thread (and every task still on it).
    _stop: oneshot::Sender<()>,
}

/// Takes a session off its thread's count however the task ends.
struct Count(Arc<AtomicUsize>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` threads (`0`: one per CPU).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { n };
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("pg-proxy-{i}")).spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
            threads.push(Worker { handle, sessions: Arc::new(AtomicUsize::new(0)), _stop: stop });
        }
        Ok(Workers { threads })
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Runs `task` on the thread with the fewest tasks.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.threads.iter().min_by_key(|w| w.sessions.load(Ordering::Relaxed)) else {
            return;
        };
        worker.sessions.fetch_add(1, Ordering::Relaxed);
        let count = Count(Arc::clone(&worker.sessions));
        worker.handle.spawn(async move {
            let _count = count;
            task.await;
        });
    }

    /// Tasks on each thread now.
    pub fn load(&self) -> Vec<usize> {
        self.threads.iter().map(|w| w.sessions.load(Ordering::Relaxed)).collect()
    }
}
