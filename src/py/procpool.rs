//! `tether.ProcPool` bindings: a Python async spawner or a native `command=[...]` spawner.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use pyo3_async_runtimes::TaskLocals;

use crate::procpool::{
    BoxFuture, NativeProc, NativeSpawner, NotLent, Pool, PoolConfig, PoolEvent, Proc, ProcHandle, Spawner,
};

use super::backoff::{Policy, PyBackoff};
use super::bridge::{await_py, await_py_or, Orphan};
use super::callables::is_awaitable;
use super::convert::describe_chain;
use super::errors::{value_error, Error};
use super::events::Buffered;
use super::logging::LoggerRoute;
use super::options::{param, AtLeastOne, Count, Seconds};

/// A process made by the user's `spawn()` coroutine: any Python object.
struct PyProc {
    obj: Py<PyAny>,
    label: String,
    locals: TaskLocals,
    liveness: Option<Arc<Py<PyAny>>>,
}

impl ProcHandle for PyProc {
    /// The pool's `liveness(obj)` if given; else `obj.is_alive()` (or attribute); else
    /// `obj.poll() is None` (subprocess.Popen); else `obj.returncode is None` (asyncio processes); else
    /// assumed alive. A check that raises means dead.
    fn is_alive(&self) -> bool {
        super::with_python(|py| {
            let o = self.obj.bind(py);
            if let Some(f) = &self.liveness {
                return f.bind(py).call1((o,)).and_then(|r| r.is_truthy()).unwrap_or(false);
            }
            match o.getattr("is_alive") {
                Ok(f) if f.is_callable() => f.call0().and_then(|r| r.is_truthy()).unwrap_or(false),
                Ok(v) => v.is_truthy().unwrap_or(false),
                // subprocess.Popen learns of its exit only when polled
                Err(_) => match o.getattr("poll") {
                    Ok(poll) if poll.is_callable() => poll.call0().map(|r| r.is_none()).unwrap_or(false),
                    _ => o.getattr("returncode").map(|r| r.is_none()).unwrap_or(true),
                },
            }
        })
        .unwrap_or(false)
    }

    /// `await obj.aclose()` if it has one, else `obj.close()`, else `obj.kill()` then
    /// `await obj.wait()` (so an asyncio subprocess is reaped on its loop); bounded to 5 s.
    fn dispose(&self) -> BoxFuture<()> {
        let fut = super::with_python(|py| -> Option<_> {
            let o = self.obj.bind(py);
            let callable = |name: &str| o.getattr(name).ok().filter(|f| f.is_callable());
            let r = if let Some(f) = callable("aclose").or_else(|| callable("close")) {
                f.call0().ok()?
            } else if let Some(kill) = callable("kill") {
                let _ = kill.call0(); // ProcessLookupError: it exited already; reap it all the same
                callable("wait")?.call0().ok()?
            } else {
                return None;
            };
            if is_awaitable(&r).unwrap_or(false) {
                await_py(py, &self.locals, r).ok()
            } else {
                None
            }
        })
        .flatten();
        Box::pin(async move {
            if let Some(f) = fut {
                let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
            }
        })
    }

    /// `obj.kill()` if it has one (asyncio and subprocess processes, multiprocessing.Process).
    fn kill_now(&self) {
        super::with_python(|py| {
            if let Ok(kill) = self.obj.bind(py).getattr("kill") {
                if kill.is_callable() {
                    let _ = kill.call0();
                }
            }
        });
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// How a `spawn=` process is named in records and errors: its repr.
fn label_of(obj: &Bound<'_, PyAny>) -> String {
    obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| "process".into())
}

struct PySpawner {
    spawn: Py<PyAny>,
    locals: OnceLock<TaskLocals>,
    liveness: Option<Arc<Py<PyAny>>>,
}

impl PySpawner {
    /// What becomes of a process `spawn()` returned when the pool no longer waited for it (it closed as
    /// the spawn finished): disposed of as the pool disposes of its processes. The coroutine finished,
    /// so no CancelledError told it to end the child itself.
    fn disposer(&self, locals: &TaskLocals) -> Orphan {
        let (locals, liveness) = (locals.clone(), self.liveness.clone());
        let runtime = tokio::runtime::Handle::try_current().ok();
        Box::new(move |py, obj| {
            let label = label_of(obj.bind(py));
            tracing::debug!(target: "tether::procpool", proc = %label,
                "disposing {label}: spawn() returned it as the pool stopped waiting for it");
            let p = PyProc { obj, label, locals, liveness };
            let dispose = p.dispose();
            match runtime {
                Some(rt) => drop(rt.spawn(dispose)),
                None => drop(futures_util::FutureExt::now_or_never(dispose)),
            }
        })
    }
}

impl Spawner for PySpawner {
    fn spawn(&self, limit: Duration) -> BoxFuture<Result<Proc, String>> {
        let Some(locals) = self.locals.get().cloned() else {
            return Box::pin(async { Err("the pool was not started inside an event loop".to_string()) });
        };
        let started = super::try_with_python(String::from, |py| -> Result<_, String> {
            if locals.event_loop(py).call_method0("is_closed").and_then(|c| c.is_truthy()).unwrap_or(false) {
                return Err("the event loop the pool was started on is closed".into());
            }
            let aw =
                self.spawn.call0(py).map_err(|e| format!("spawn() raised {}", describe_chain(py, &e)))?.into_bound(py);
            if !is_awaitable(&aw).unwrap_or(false) {
                return Err("spawn must be an async callable returning the process object".into());
            }
            await_py_or(py, &locals, aw, Some(self.disposer(&locals)))
                .map_err(|e| format!("could not schedule spawn(): {e}"))
        });
        let liveness = self.liveness.clone();
        Box::pin(async move {
            // dropping the awaited spawn cancels the Python task
            let obj = match tokio::time::timeout(limit, started?).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    return Err(format!(
                        "spawn() raised {}",
                        super::with_python(|py| describe_chain(py, &e)).unwrap_or_default()
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "spawn() did not finish within {:.1}s (initialize_timeout); it was cancelled",
                        limit.as_secs_f64()
                    ))
                }
            };
            let label = super::with_python(|py| label_of(obj.bind(py))).unwrap_or_else(|| "process".into());
            Ok(Arc::new(PyProc { obj, label, locals, liveness }) as Proc)
        })
    }

    /// The event loop the pool was started on is closed: no spawn can be scheduled any more.
    fn gone(&self) -> bool {
        let Some(locals) = self.locals.get() else { return false };
        super::with_python(|py| {
            locals.event_loop(py).call_method0("is_closed").and_then(|c| c.is_truthy()).unwrap_or(false)
        })
        .unwrap_or(true)
    }
}

/// A native worker from a ``command=[...]`` pool (frames over stdin/stdout, see ``tether.worker``).
#[pyclass(name = "WorkerProc", module = "tether._native", frozen)]
pub struct PyWorkerProc {
    proc: Proc,
}

impl PyWorkerProc {
    fn native(&self) -> &NativeProc {
        self.proc.as_any().downcast_ref::<NativeProc>().expect("WorkerProc wraps a NativeProc")
    }
}

#[pymethods]
impl PyWorkerProc {
    /// The child's process id.
    #[getter]
    fn pid(&self) -> u32 {
        self.native().pid()
    }
    /// Exit code (negative signal number if killed), None while running.
    #[getter]
    fn returncode(&self) -> Option<i32> {
        self.native().returncode()
    }
    /// True while the child runs.
    fn is_alive(&self) -> bool {
        self.proc.is_alive()
    }
    /// The end of what the child wrote to stderr (failure messages quote it).
    #[getter]
    fn stderr_tail(&self) -> String {
        self.native().stderr_tail()
    }
    /// Send one frame and await the reply frame, within ``timeout`` seconds if given (``tether.TimeoutError``). A
    /// request that does not complete (timeout, cancellation) kills the worker: it is never handed out again, since
    /// its late reply would answer the next request.
    #[pyo3(signature = (data, *, timeout=None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        timeout: Option<Seconds<param::Timeout>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data: Vec<u8> = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(s) = data.cast::<PyString>() {
            s.to_str()?.as_bytes().to_vec()
        } else {
            return Err(PyTypeError::new_err("data must be bytes or str"));
        };
        let limit = timeout.map(|s| s.0);
        let proc = self.proc.clone();
        super::bridge::coroutine::coroutine(py, "WorkerProc.request", async move {
            let native = proc.as_any().downcast_ref::<NativeProc>().expect("a WorkerProc wraps a NativeProc");
            native.request(&data, limit).await.map_err(Error::from)
        })
    }
    fn __repr__(&self) -> String {
        format!("WorkerProc(pid={}, alive={})", self.pid(), self.proc.is_alive())
    }
}

/// A lent process from the moment the acquire's Rust work got it until the acquiring task resumes, when
/// `hand_over` makes it the caller's object. Dropped before that (its awaitable cancelled as it finished,
/// or the task cancelled in between: a timeout firing that very loop iteration), it gives the process
/// back to the pool instead of leaving it lent to nobody.
#[pyclass(module = "tether._native", frozen)]
struct Handover {
    proc: Mutex<Option<Proc>>,
    pool: Pool,
    out: Lent,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(p) = self.proc.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            give_back(&self.pool, p);
        }
    }
}

fn give_back(pool: &Pool, p: Proc) {
    let _guard = super::bridge::runtime::get().enter();
    let _ = pool.release(p, false);
}

/// `ProcPool.acquire`'s `Finish`: the handover becomes the caller's object.
fn hand_over(py: Python<'_>, v: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let Ok(h) = v.cast::<Handover>() else { return Ok(v.unbind()) };
    let h = h.get();
    match h.proc.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(p) => lend(py, &h.out, p),
        None => Ok(py.None()),
    }
}

super::events::buffered_stream!(
    /// `async for ev in pool.events()`: ends when the pool closes.
    PoolEventStream,
    PoolEvent,
    super::pool_events::to_py
);

/// A prewarmed pool whose ``acquire`` never hangs. ``spawn``: an async callable (``async def``; a plain function is a
/// TypeError) returning any object, alive per ``liveness(proc)`` if given (called from a tether thread, with the GIL:
/// keep it quick and non-blocking), else its ``is_alive()``, else ``poll() is None``, else ``returncode is None``;
/// disposed with ``aclose()``/``close()``, else ``kill()`` then ``await wait()``. A spawn that raises ``X from cause``
/// reports both. A spawn is cancelled at ``initialize_timeout`` and when the pool closes while it runs: a child it
/// started is its own to kill on ``CancelledError`` (the pool never saw it); a process it returns as the pool closes,
/// the pool disposes of. Or ``command``: argv of a child that sends the ready frame (``tether.worker``); such children
/// die with this process (``PR_SET_PDEATHSIG`` on Linux). At interpreter exit, pools nobody closed kill what they own
/// (``kill()`` for spawn= objects).
///
/// Each spawn made while acquirers wait is made for one of them (an acquirer also takes over a spawn for the idle
/// target still starting when it arrives); its failure is a failed attempt of that acquirer only; after
/// ``acquire_attempts`` failed attempts it raises ``PoolExhausted`` (``.failures``: its own spawns' causes,
/// ``.attempts``). Once the pool is unhealthy (2 spawn failures in a row since the last success; spawns then run one at
/// a time), the next spawn failure, whoever it was made for, raises ``PoolExhausted`` in every waiting acquire
/// (``.failures``: those since it began). A process found dead before its first use, within ``initialize_timeout`` of
/// its spawn's success, fails that spawn after all (the failures in a row and the backoff before it come back).
/// ``timeout`` bounds the acquire (``TimeoutError``). ``release``/``detach`` of a process this pool did not lend (or
/// twice) raise ValueError. A request that does not complete kills its worker. ``name``: the ``name`` attribute of the
/// pool's metrics (``tether.metrics``).
#[pyclass(name = "ProcPool", module = "tether._native", frozen)]
pub struct PyProcPool {
    pool: Pool,
    py_spawner: Option<Arc<PySpawner>>,
    out: Lent,
    /// Its `logger=`, kept while it lives; the key also goes to the records of its event streams.
    logger: Option<LoggerRoute>,
}

/// Python-spawned processes handed out, by object identity, so `release` finds their handle.
type Lent = Arc<Mutex<HashMap<usize, Proc>>>;

/// The Python object for a lent process (remembered for `release`/`detach`).
fn lend(py: Python<'_>, out: &Lent, p: Proc) -> PyResult<Py<PyAny>> {
    if let Some(pp) = p.as_any().downcast_ref::<PyProc>() {
        let obj = pp.obj.clone_ref(py);
        out.lock().unwrap_or_else(|e| e.into_inner()).insert(obj.as_ptr() as usize, p);
        Ok(obj)
    } else {
        Ok(Py::new(py, PyWorkerProc { proc: p })?.into_any())
    }
}

fn not_lent(what: &str) -> PyErr {
    value_error(format!("{what}: {NotLent}"))
}

/// Start prewarming; a spawn= pool's spawns run on the calling (running) loop.
fn start(py: Python<'_>, pool: &Pool, spawner: Option<&PySpawner>) -> PyResult<()> {
    if let Some(ps) = spawner {
        if ps.locals.get().is_none() {
            let locals = super::bridge::runtime::get_current_locals(py).map_err(|_| {
                PyTypeError::new_err("ProcPool(spawn=...).start() must be called inside a running event loop")
            })?;
            let _ = ps.locals.set(locals);
        }
    }
    let _guard = super::bridge::runtime::get().enter();
    pool.start();
    Ok(())
}

impl PyProcPool {
    /// The pool's handle for a process it lent, taken out of `out` for Python-spawned ones.
    fn handle(&self, proc: &Bound<'_, PyAny>, what: &str) -> PyResult<Proc> {
        if let Ok(w) = proc.cast::<PyWorkerProc>() {
            return Ok(w.get().proc.clone());
        }
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(proc.as_ptr() as usize))
            .ok_or_else(|| not_lent(what))
    }
}

#[pymethods]
impl PyProcPool {
    #[new]
    #[pyo3(signature = (spawn=None, command=None, *, num_idle=None, max_concurrent_spawns=None, initialize_timeout=None,
        acquire_attempts=None, respawn=None, env=None, cwd=None, liveness=None, logger=None, name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        spawn: Option<Bound<'_, PyAny>>,
        command: Option<Bound<'_, PyAny>>,
        num_idle: Option<Count<param::NumIdle>>,
        max_concurrent_spawns: Option<AtLeastOne<param::MaxConcurrentSpawns>>,
        initialize_timeout: Option<Seconds<param::InitializeTimeout>>,
        acquire_attempts: Option<AtLeastOne<param::AcquireAttempts>>,
        respawn: Option<Policy<param::Respawn>>,
        env: Option<&Bound<'_, PyDict>>,
        cwd: Option<String>,
        liveness: Option<Bound<'_, PyAny>>,
        logger: Option<&Bound<'_, PyAny>>,
        name: Option<&str>,
    ) -> PyResult<Self> {
        let logger = LoggerRoute::of(py, logger)?;
        super::logging::sync(py);
        let spawn = spawn.filter(|s| !s.is_none());
        let command = command.filter(|c| !c.is_none());
        let d = PoolConfig::default();
        let cfg = PoolConfig {
            num_idle: num_idle.map_or(d.num_idle, |n| n.0 as usize),
            max_concurrent_spawns: max_concurrent_spawns.map_or(d.max_concurrent_spawns, |n| n.0 as usize),
            initialize_timeout: initialize_timeout.map_or(d.initialize_timeout, |s| s.0),
            acquire_attempts: acquire_attempts.map_or(d.acquire_attempts, |n| n.0),
            respawn: respawn.map_or(d.respawn, |p| p.0),
            unhealthy_after: d.unhealthy_after,
            logger: logger.as_ref().map(LoggerRoute::key),
            name: name.map_or(d.name, crate::redact::redact_url),
        };
        let (spawner, py_spawner): (Arc<dyn Spawner>, Option<Arc<PySpawner>>) = match (spawn, command) {
            (Some(_), Some(_)) => return Err(PyTypeError::new_err("give either spawn= or command=, not both")),
            (None, None) => {
                return Err(PyTypeError::new_err("ProcPool needs spawn=<async callable> or command=[argv...]"))
            }
            (Some(s), None) => {
                super::callables::require_async(py, "spawn", &s)?;
                let liveness = match liveness.filter(|l| !l.is_none()) {
                    Some(l) if !l.is_callable() => {
                        return Err(PyTypeError::new_err("liveness must be a callable(proc) -> bool"))
                    }
                    l => l.map(|l| Arc::new(l.unbind())),
                };
                let ps = Arc::new(PySpawner { spawn: s.unbind(), locals: OnceLock::new(), liveness });
                (ps.clone(), Some(ps))
            }
            (None, Some(c)) => {
                if liveness.is_some_and(|l| !l.is_none()) {
                    return Err(PyTypeError::new_err(
                        "liveness= is for spawn= pools; command= workers are checked natively",
                    ));
                }
                if c.is_instance_of::<PyString>() {
                    return Err(PyTypeError::new_err(
                        "command must be a list of arguments, e.g. [sys.executable, \"-m\", \"tether.worker\"]",
                    ));
                }
                let argv: Vec<String> =
                    c.extract().map_err(|_| PyTypeError::new_err("command must be a list of str"))?;
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(value_error("command must name a program"));
                }
                let env: Vec<(String, String)> = match env {
                    Some(e) => e
                        .extract::<HashMap<String, String>>()
                        .map_err(|_| PyTypeError::new_err("env must be a dict of str to str"))?
                        .into_iter()
                        .collect(),
                    None => vec![],
                };
                (Arc::new(NativeSpawner { argv, env, cwd: cwd.map(Into::into) }), None)
            }
        };
        Ok(PyProcPool { pool: Pool::new(cfg, spawner), py_spawner, out: Arc::new(Mutex::new(HashMap::new())), logger })
    }

    /// Start prewarming (call inside a running event loop when using spawn=).
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        start(py, &self.pool, self.py_spawner.as_deref())
    }

    /// A warm process (a `WorkerProc` for command= pools, your object for spawn= pools).
    #[pyo3(signature = (timeout=None))]
    fn acquire<'py>(&self, py: Python<'py>, timeout: Option<Seconds<param::Timeout>>) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout.map(|s| s.0);
        let (pool, out, spawner) = (self.pool.clone(), self.out.clone(), self.py_spawner.clone());
        // at the first step, on the loop that drives it: an acquire never awaited lends nothing
        super::bridge::coroutine::deferred_handover(py, "ProcPool.acquire", hand_over, move |py| {
            start(py, &pool, spawner.as_deref())?;
            // a warm process is idle: handed over at this step, without a trip through the runtime
            let idle = pool.try_acquire();
            Ok(async move {
                let p = match idle {
                    Some(p) => p,
                    None => pool.acquire(t).await?,
                };
                Ok::<_, Error>(Handover { proc: Mutex::new(Some(p)), pool, out })
            })
        })
    }

    /// Until ``n`` (default num_idle; a lower idle target is raised to ``n``) processes are idle. Raises
    /// PoolExhausted once ``acquire_attempts`` spawns failed in a row, or TimeoutError.
    #[pyo3(signature = (n=None, timeout=None))]
    fn warm<'py>(
        &self,
        py: Python<'py>,
        n: Option<Count<param::N>>,
        timeout: Option<Seconds<param::Timeout>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = n.map(|n| n.0 as usize);
        let t = timeout.map(|s| s.0);
        let (pool, spawner) = (self.pool.clone(), self.py_spawner.clone());
        super::bridge::coroutine::deferred(py, "ProcPool.warm", move |py| {
            start(py, &pool, spawner.as_deref())?;
            Ok(async move {
                pool.warm(n, t).await?;
                Ok::<_, Error>(())
            })
        })
    }

    /// Return a process: kept warm if alive and wanted (and kill is False), else killed and reaped.
    /// ValueError if this pool did not lend it (or it was released or detached already).
    #[pyo3(signature = (proc, *, kill=false))]
    fn release(&self, proc: &Bound<'_, PyAny>, kill: bool) -> PyResult<()> {
        let handle = self.handle(proc, "release")?;
        let _guard = super::bridge::runtime::get().enter();
        self.pool.release(handle, kill).map_err(|_| not_lent("release"))
    }

    /// ``proc`` leaves the pool for good (not killed by the pool, no longer counted); the pool refills. A native
    /// worker still dies with this process.
    fn detach(&self, proc: &Bound<'_, PyAny>) -> PyResult<()> {
        let handle = self.handle(proc, "detach")?;
        let _guard = super::bridge::runtime::get().enter();
        self.pool.detach(&handle).map_err(|_| not_lent("detach"))
    }

    /// Keep ``n`` processes idle from now on; idle ones beyond it are disposed of.
    fn set_target_idle(&self, n: Count<param::N>) -> PyResult<()> {
        let _guard = super::bridge::runtime::get().enter();
        self.pool.set_target_idle(n.0 as usize);
        Ok(())
    }

    /// Close (bounded): waiters fail, idle processes are killed and reaped, in-flight spawns settle.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pool = self.pool.clone();
        super::bridge::coroutine::coroutine(py, "ProcPool.aclose", async move {
            pool.close().await;
            Ok::<_, PyErr>(())
        })
    }

    /// False while the pool cannot produce processes (consecutive spawn failures).
    #[getter]
    fn healthy(&self) -> bool {
        self.pool.healthy()
    }

    /// ``idle``, ``in_flight`` (spawns under way), ``lent``, ``spawns`` (so far), ``healthy`` and ``closed``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("idle", self.pool.idle())?;
        d.set_item("in_flight", self.pool.in_flight())?;
        d.set_item("lent", self.pool.lent())?;
        d.set_item("spawns", self.pool.spawns())?;
        d.set_item("healthy", self.pool.healthy())?;
        d.set_item("closed", self.pool.is_closed())?;
        Ok(d)
    }

    /// ``async for ev in pool.events()``: ``Spawned``, ``SpawnFailed``, ``Evicted``, ``Exhausted``, ``HealthChanged``
    /// (``tether._procpool``) from this call on; ends when the pool closes.
    fn events(&self) -> PoolEventStream {
        let s = PoolEventStream {
            inner: Buffered::new(
                self.pool.subscribe(),
                |e| matches!(e, PoolEvent::Closed),
                "ProcPool events",
                self.logger.as_ref().map(LoggerRoute::key),
            ),
        };
        if self.pool.is_closed() {
            s.inner.end_now();
        }
        s
    }
}

/// The defaults `help(tether.ProcPool)` shows, from `PoolConfig::default()` (their one source).
fn show_defaults(cls: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = cls.py();
    let d = PoolConfig::default();
    super::signature::show_defaults(
        cls,
        vec![
            ("num_idle", d.num_idle.into_pyobject(py)?.into_any()),
            ("max_concurrent_spawns", d.max_concurrent_spawns.into_pyobject(py)?.into_any()),
            ("initialize_timeout", d.initialize_timeout.as_secs_f64().into_pyobject(py)?.into_any()),
            ("acquire_attempts", d.acquire_attempts.into_pyobject(py)?.into_any()),
            ("respawn", PyBackoff { inner: d.respawn.clone() }.into_pyobject(py)?.into_any()),
            ("name", d.name.into_pyobject(py)?.into_any()),
        ],
    )
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyProcPool>()?;
    show_defaults(&m.getattr("ProcPool")?)?;
    m.add_class::<PyWorkerProc>()?;
    m.add_class::<PoolEventStream>()
}
