//! A future polled first on the calling (loop) thread and handed to tokio only once it is woken.
//!
//! Spawning every pending awaitable right away costs the loop thread a cross-thread wake of a tokio
//! worker (an eventfd write or a futex) per awaitable, and the worker polls it a second time only to
//! find it still pending. Here the first poll registers a waker that spawns the future on its first
//! wake-up: a pending awaitable costs no tokio task and no cross-thread wake until its event happens.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Wake;

use tokio::runtime::Runtime as TokioRuntime;
use tokio::task::AbortHandle;

pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Stage {
    /// The first poll is under way; `woken` if its waker already fired.
    Polling {
        woken: bool,
    },
    Parked(Task),
    Running(AbortHandle),
    Cancelled,
}

pub struct Parked {
    stage: Mutex<Stage>,
    runtime: &'static TokioRuntime,
}

impl Parked {
    pub fn new(runtime: &'static TokioRuntime) -> Arc<Self> {
        Arc::new(Parked { stage: Mutex::new(Stage::Polling { woken: false }), runtime })
    }

    fn stage(&self) -> MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first poll returned Pending: run `task` (the rest of the future) once woken, or now if the
    /// waker fired during that poll.
    pub fn park(&self, task: Task) {
        let mut stage = self.stage();
        match *stage {
            Stage::Polling { woken: true } => *stage = Stage::Running(self.runtime.spawn(task).abort_handle()),
            Stage::Polling { woken: false } => *stage = Stage::Parked(task),
            Stage::Parked(_) | Stage::Running(_) | Stage::Cancelled => {}
        }
    }

    /// Stop the future: drop it if still parked, abort its tokio task if running.
    pub fn cancel(&self) {
        // replaced under the lock, dropped after it: dropping the future may wake this very waker
        let previous = std::mem::replace(&mut *self.stage(), Stage::Cancelled);
        if let Stage::Running(task) = &previous {
            task.abort();
        }
        drop(previous);
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut stage = self.stage();
        match &mut *stage {
            Stage::Polling { woken } => *woken = true,
            Stage::Parked(_) => {
                if let Stage::Parked(task) = std::mem::replace(&mut *stage, Stage::Cancelled) {
                    // spawned under the lock, so a concurrent cancel finds the handle to abort
                    *stage = Stage::Running(self.runtime.spawn(task).abort_handle());
                }
            }
            Stage::Running(_) | Stage::Cancelled => {}
        }
    }
}
