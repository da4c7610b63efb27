//! tracing -> Python `logging`.
//!
//! Only targets under `tether` are forwarded, to loggers named `tether.<module>`; structured fields go
//! into `extra`. A record with a `logger` field goes to that Python logger instead: objects built with
//! `logger=` carry the key of their [`LoggerRoute`] in their config and add `logger = cfg.logger.as_deref()`
//! to every record they emit. The level filter lives on the Rust side: `set_log_level` (called by the Python package
//! whenever it syncs with the `tether` logger's effective level) updates an atomic and rebuilds tracing's
//! interest cache, so a disabled level costs one relaxed load at the callsite and never touches Python.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// 0 = off, 1 = error, 2 = warn, 3 = info, 4 = debug, 5 = trace. Off until the package syncs it.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn python_level(level: &Level) -> i32 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// Map a Python logging level number to our rank.
fn rank_from_python(py_level: i64) -> u8 {
    match py_level {
        l if l <= 5 => 5,
        l if l <= 10 => 4,
        l if l <= 20 => 3,
        l if l <= 30 => 2,
        l if l <= 40 => 1,
        _ => 0,
    }
}

#[pyfunction]
pub fn _set_log_level(py_level: i64) {
    let new = rank_from_python(py_level);
    if MAX_LEVEL.swap(new, Ordering::Relaxed) != new {
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Re-read the `tether` loggers' levels (Python side) into the Rust filter. Errors are ignored: a broken
/// logging configuration must not stop a connection from being created.
pub fn sync(py: Python<'_>) {
    if let Ok(m) = py.import("tether._logging") {
        let _ = m.call_method0("sync_log_level");
    }
}

/// A tether object's `logger=`, registered with `tether._logging`: the key its records carry in their
/// `logger` field, and the route the object keeps for as long as it lives. `tether._logging` holds routes
/// weakly: while one is kept, the logger gets the records and its level counts in the Rust-side filter.
pub struct LoggerRoute {
    key: Arc<str>,
    _route: Py<PyAny>,
}

impl LoggerRoute {
    /// `logger=` (None, a logger name or a `logging.Logger`) registered; TypeError/ValueError for anything
    /// else.
    pub fn of(py: Python<'_>, logger: Option<&Bound<'_, PyAny>>) -> PyResult<Option<LoggerRoute>> {
        let Some(logger) = logger.filter(|l| !l.is_none()) else { return Ok(None) };
        let (key, route): (String, Py<PyAny>) =
            py.import("tether._logging")?.call_method1("register_logger", (logger,))?.extract()?;
        Ok(Some(LoggerRoute { key: key.into(), _route: route }))
    }

    /// The key for the object's config.
    pub fn key(&self) -> Arc<str> {
        self.key.clone()
    }
}

enum Value {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(String),
}

#[derive(Default)]
struct Collect {
    message: String,
    /// Routing key of the object's own logger (the `logger` field), not an `extra` field.
    logger: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Collect {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.fields.push((f.name(), Value::F(v)));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.fields.push((f.name(), Value::I(v)));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.fields.push((f.name(), Value::U(v)));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.fields.push((f.name(), Value::B(v)));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.message.push_str(v);
        } else if f.name() == "logger" {
            self.logger = Some(v.to_string());
        } else {
            self.fields.push((f.name(), Value::S(v.to_string())));
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.message, "{v:?}");
        } else {
            self.fields.push((f.name(), Value::S(format!("{v:?}"))));
        }
    }
}

/// `LogRecord` attributes that `extra` may not overwrite.
const RESERVED: &[&str] = &[
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "message",
    "asctime",
    "taskName",
];

struct PyLogLayer;

impl<S: Subscriber> Layer<S> for PyLogLayer {
    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        rank(meta.level()) <= MAX_LEVEL.load(Ordering::Relaxed) && meta.target().starts_with("tether")
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match MAX_LEVEL.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut c = Collect::default();
        event.record(&mut c);
        let level = python_level(meta.level());
        // never initialise or touch a finalising interpreter for a log line
        let _ = super::with_python(|py| {
            let r: PyResult<()> = (|| {
                let routed = match c.logger.take() {
                    Some(key) => py.import("tether._logging")?.call_method1("logger_for", (key,))?,
                    None => py.None().into_bound(py),
                };
                // no route: no logger=, or its objects are gone (a closing pool's last record)
                let logger = if routed.is_none() {
                    py.import("logging")?.call_method1("getLogger", (meta.target().replace("::", "."),))?
                } else {
                    routed
                };
                if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
                    return Ok(());
                }
                let extra = PyDict::new(py);
                for (k, v) in c.fields.drain(..) {
                    let key = if RESERVED.contains(&k) { format!("tether_{k}") } else { k.to_string() };
                    match v {
                        Value::I(x) => extra.set_item(key, x)?,
                        Value::U(x) => extra.set_item(key, x)?,
                        Value::F(x) => extra.set_item(key, x)?,
                        Value::B(x) => extra.set_item(key, x)?,
                        Value::S(x) => extra.set_item(key, x)?,
                    }
                }
                // makeRecord with the Rust file/line, so records point at the code that logged them.
                let record = logger.call_method1(
                    "makeRecord",
                    (
                        logger.getattr("name")?,
                        level,
                        meta.file().unwrap_or("<rust>"),
                        meta.line().unwrap_or(0),
                        c.message.as_str(),
                        pyo3::types::PyTuple::empty(py),
                        py.None(),
                        meta.module_path().unwrap_or("tether"),
                        extra,
                    ),
                )?;
                logger.call_method1("handle", (record,))?;
                Ok(())
            })();
            if let Err(e) = r {
                // A broken handler must not take the Rust side down; report it like logging does.
                e.print(py);
            }
        });
    }
}

/// Install the bridge as the global subscriber. No threads, no runtime: safe at import time.
pub fn install() {
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PyLogLayer));
}
