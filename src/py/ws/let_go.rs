//! A connection the application lets go of without closing it (its last reference dropped, on any
//! thread): its socket is aborted and its deadline taken out on its loop, and whoever still waits on it
//! (a send left to a task) is told what was never delivered.

use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;

use super::super::bridge::coroutine::Slot;
use super::super::events::LoopSub;
use super::super::with_python;
use super::exceptions::{terminal_error_with, EndLists};
#[cfg(unix)]
use super::reader;
use super::{current_thread, link, loop_timers, Conn, Fx, Terminal};

impl Drop for Conn {
    fn drop(&mut self) {
        // the application let go of a connection it did not close: its socket goes with it, and
        // whoever still waits on it (a send left in a task) is told what was not delivered
        let orphans = std::mem::take(self.orphans.get_mut().unwrap_or_else(|p| p.into_inner()));
        let ended = self.terminal.get().is_some();
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut bye = LetGo {
            timer: inner.timer.abandon(),
            #[cfg(unix)]
            reader: None,
            transports: inner.draining.drain(..).map(|d| d.1).collect(),
            subs: std::mem::take(self.subs.get_mut().unwrap_or_else(|p| p.into_inner()))
                .iter()
                .filter_map(Weak::upgrade)
                .collect(),
            waiters: vec![],
            handed: vec![],
        };
        if let Some(link) = inner.link.take() {
            #[cfg(unix)]
            {
                bye.reader = link.reader;
            }
            bye.transports.extend(link.transport);
        }
        if let Some(f) = inner.watchdog_forward.take() {
            f.abort();
        }
        // effects made on another thread that no hand-over will run now
        let handed = std::mem::take(&mut inner.handed);
        // those still waiting: true for those that fail (sends, starts), false for those the end
        // answers (receives, closes)
        let mut waiting = vec![];
        let mut term = None;
        if !ended {
            Self::adopt(inner, orphans);
            let (pending, undelivered) = inner.proto.finish();
            waiting = pending.into_iter().chain(inner.room.drain(..)).map(|s| (s, true)).collect();
            waiting.extend(inner.started.drain(..).map(|s| (s, true)));
            waiting.extend(inner.readable.drain(..).chain(inner.closed.drain(..)).map(|s| (s, false)));
            term = Some(Terminal::LetGo { undelivered: Default::default() }.with_undelivered(undelivered));
        }
        bye.handed = handed;
        let el = self.el.get();
        let name = self.name.clone();
        with_python(|py| {
            if let Some(term) = &term {
                // the lists of what was never delivered made once, for every waiter's exception
                let lists = EndLists::of(py, term.undelivered());
                let err = |py| match &lists {
                    Ok(lists) => terminal_error_with(py, term, &self.name, self.opened(), lists),
                    Err(e) => e.clone_ref(py),
                };
                bye.waiters = waiting
                    .into_iter()
                    .map(|(s, fails)| (s, if fails { Err(err(py)) } else { Ok(py.None()) }))
                    .collect();
            }
            match el {
                // asyncio's objects are used on their loop's thread only
                Some(el) if el.thread != current_thread() => {
                    let obj = el.obj.bind(py);
                    let Ok(soon) = Py::new(py, LetGoSoon(Mutex::new(None))) else { return };
                    *soon.get().0.lock().unwrap_or_else(|p| p.into_inner()) = Some((bye, name));
                    if obj.call_method1(pyo3::intern!(py, "call_soon_threadsafe"), (soon.clone_ref(py),)).is_ok() {
                        return;
                    }
                    // the loop is closed: nothing will run on it again
                    let left = soon.get().0.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some((bye, name)) = left {
                        bye.run(py, Some(obj), &name);
                    }
                }
                _ => bye.run(py, el.map(|el| el.obj.bind(py)), &name),
            }
        });
    }
}

/// What a connection let go without `close()` leaves to do on its loop.
struct LetGo {
    timer: Option<u64>,
    #[cfg(unix)]
    reader: Option<Py<reader::Reader>>,
    transports: Vec<Py<PyAny>>,
    subs: Vec<Arc<LoopSub>>,
    waiters: Vec<(Arc<Slot>, PyResult<Py<PyAny>>)>,
    handed: Vec<Fx>,
}

impl LetGo {
    fn run(self, py: Python<'_>, el: Option<&Bound<'_, PyAny>>, name: &str) {
        // its deadline leaves the loop's timers now, which close if it was the last
        if let (Some(id), Some(el)) = (self.timer, el) {
            loop_timers::cancel(py, el, id);
        }
        #[cfg(unix)]
        if let Some(r) = self.reader {
            r.get().stop(py);
        }
        for t in self.transports {
            link::close_transport(py, t.bind(py), true);
        }
        for sub in self.subs {
            for slot in sub.end() {
                slot.set(py, Ok(py.None()));
            }
        }
        for (slot, r) in self.waiters {
            slot.set(py, r);
        }
        for fx in self.handed {
            fx.release(py, name);
        }
    }
}

/// A connection let go on a thread other than its loop's: the rest is done on the loop (the one running
/// it: the loop is not held here, where its queue would hold what holds it).
#[pyclass(module = "tether._native", frozen)]
struct LetGoSoon(Mutex<Option<(LetGo, String)>>);

#[pymethods]
impl LetGoSoon {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let left = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((bye, name)) = left {
            let el = py.import(pyo3::intern!(py, "asyncio"))?.call_method0(pyo3::intern!(py, "get_running_loop"))?;
            bye.run(py, Some(&el), &name);
        }
        Ok(())
    }
}
