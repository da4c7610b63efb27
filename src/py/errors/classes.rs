//! The tether exception classes and `FailedMessage`, made once per process from the specs below.
//!
//! They are made with `type(name, bases, namespace)` rather than `#[pyclass(extends=PyException)]`:
//! `tether.TimeoutError` is a subclass of both `TetherError` and the builtin `TimeoutError`, and a
//! pyclass has one base, with a Rust layout the builtin's (an `OSError`) could not share. Their
//! attributes live in the instance `__dict__`, as for a Python-defined exception, so pickling, `copy`
//! and `vars()` behave as they always did. The keyword constructors are `Init`, a Rust callable that
//! binds like a method.

use pyo3::exceptions::{PyException, PyTimeoutError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PySuper, PyTuple, PyType};

use super::super::signature::{no_default, Kind};

/// The module the classes say they belong to: where users import them from, and where pickle finds them.
const MODULE: &str = "tether";

/// A tether exception class: an index into `SPECS`, whose order is the order of creation (a base
/// before its subclasses).
#[derive(Clone, Copy)]
pub enum Class {
    TetherError,
    GaveUp,
    PoolExhausted,
    NotReady,
    ConnectionClosed,
    ConnectFailed,
    SendBufferFull,
    SendFailed,
    TimeoutError,
}

enum Base {
    Exception,
    BuiltinTimeout,
    Of(Class),
}

/// A keyword argument of a constructor, stored as the attribute of the same name.
#[derive(Clone, Copy)]
enum Field {
    /// Kept as given.
    Value(&'static str, Default),
    /// Any iterable, kept as a list (empty when left out: `()` in the signature).
    List(&'static str),
    /// A mapping or None, kept as a dict (empty when left out: None in the signature).
    Dict(&'static str),
}

#[derive(Clone, Copy)]
enum Default {
    Zero,
    ZeroSeconds,
    Empty,
    Nothing,
}

impl Field {
    fn name(&self) -> &'static str {
        match self {
            Field::Value(n, _) | Field::List(n) | Field::Dict(n) => n,
        }
    }

    /// The default the signature shows.
    fn default<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Field::Value(_, Default::Zero) => 0i64.into_pyobject(py)?.into_any(),
            Field::Value(_, Default::ZeroSeconds) => 0.0f64.into_pyobject(py)?.into_any(),
            Field::Value(_, Default::Empty) => "".into_pyobject(py)?.into_any(),
            Field::Value(_, Default::Nothing) | Field::Dict(_) => py.None().into_bound(py),
            Field::List(_) => PyTuple::empty(py).into_any(),
        })
    }

    /// The attribute's value for what was passed (None: left out).
    fn value<'py>(&self, py: Python<'py>, given: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        match (self, given) {
            (Field::Value(..), Some(v)) => Ok(v),
            (Field::List(_), Some(v)) => Ok(py.get_type::<PyList>().call1((v,))?),
            (Field::Dict(_), Some(v)) if !v.is_truthy()? => Ok(PyDict::new(py).into_any()),
            (Field::Dict(_), Some(v)) => Ok(py.get_type::<PyDict>().call1((v,))?),
            (Field::List(_), None) => Ok(PyList::empty(py).into_any()),
            (Field::Dict(_), None) => Ok(PyDict::new(py).into_any()),
            (Field::Value(..), None) => self.default(py),
        }
    }
}

struct Spec {
    name: &'static str,
    bases: &'static [Base],
    doc: &'static str,
    /// The keyword arguments of its own constructor; None: it inherits its base's.
    fields: Option<&'static [Field]>,
    /// Attributes computed from the others once they are set.
    derived: Option<Derive>,
}

/// Sets attributes of a new exception from those its constructor set.
type Derive = fn(&Bound<'_, PyAny>) -> PyResult<()>;

const UNDELIVERED: [Field; 2] = [Field::List("messages"), Field::List("failures")];

/// Each class's spec, in the order of `Class`.
static SPECS: [Spec; 9] = [
    Spec {
        name: "TetherError",
        bases: &[Base::Exception],
        doc: "Base class of every error tether raises on purpose.",
        fields: None,
        derived: None,
    },
    Spec {
        name: "GaveUp",
        bases: &[Base::Of(Class::TetherError)],
        doc: GAVE_UP_DOC,
        fields: Some(&[
            Field::Value("attempts", Default::Zero),
            Field::Value("last_error", Default::Nothing),
            Field::Value("elapsed", Default::ZeroSeconds),
            Field::Value("reason", Default::Empty),
            Field::Value("name", Default::Empty),
            UNDELIVERED[0],
            UNDELIVERED[1],
        ]),
        derived: None,
    },
    Spec {
        name: "PoolExhausted",
        bases: &[Base::Of(Class::TetherError)],
        doc: "``ProcPool.acquire`` could not produce a process; ``failures`` lists each spawn failure's cause.",
        fields: Some(&[Field::List("failures"), Field::Value("attempts", Default::Zero)]),
        derived: None,
    },
    Spec {
        name: "NotReady",
        bases: &[Base::Of(Class::TetherError)],
        doc: "A dispatched job did not reach readiness; ``stage`` names the stage it is stuck before.",
        fields: Some(&[
            Field::Value("job_id", Default::Empty),
            Field::Value("stage", Default::Empty),
            Field::Value("elapsed", Default::ZeroSeconds),
            Field::Dict("reached"),
            Field::Value("attempts", Default::Zero),
        ]),
        derived: None,
    },
    Spec {
        name: "ConnectionClosed",
        bases: &[Base::Of(Class::TetherError)],
        doc: CONNECTION_CLOSED_DOC,
        fields: Some(&[
            Field::Value("code", Default::Nothing),
            Field::Value("reason", Default::Empty),
            Field::Value("http_status", Default::Nothing),
            UNDELIVERED[0],
            UNDELIVERED[1],
        ]),
        derived: None,
    },
    Spec {
        name: "ConnectFailed",
        bases: &[Base::Of(Class::ConnectionClosed)],
        doc: CONNECT_FAILED_DOC,
        fields: None,
        derived: None,
    },
    Spec {
        name: "SendBufferFull",
        bases: &[Base::Of(Class::TetherError)],
        doc: "``Connection.send`` was called while ``send_buffer`` messages were already waiting for delivery.",
        fields: None,
        derived: None,
    },
    Spec {
        name: "SendFailed",
        bases: &[Base::Of(Class::TetherError)],
        doc: SEND_FAILED_DOC,
        fields: Some(&[
            Field::Value("size", Default::Zero),
            Field::Value("code", Default::Nothing),
            Field::Value("losses", Default::Nothing),
            Field::List("failures"),
        ]),
        derived: Some(payloads_of_failures),
    },
    Spec {
        name: "TimeoutError",
        // also the builtin, so `except TimeoutError` and `asyncio.TimeoutError` catch it
        bases: &[Base::Of(Class::TetherError), Base::BuiltinTimeout],
        doc: "A bounded wait expired. Also an ``asyncio.TimeoutError``/builtin ``TimeoutError``.",
        fields: Some(&[Field::Value("timeout", Default::Nothing), Field::Value("what", Default::Empty)]),
        derived: None,
    },
];

impl Class {
    /// The class object, made on first use.
    fn get(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        Ok(made(py)?.classes[self as usize].bind(py))
    }

    /// `tether.<Class>(message, **kwargs)` as a `PyErr`.
    pub fn err(self, py: Python<'_>, message: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyErr {
        match self.get(py).and_then(|cls| cls.call((message,), kwargs)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    }
}

/// `SendFailed.messages`: the payload of each of its failures, to re-send them in send order.
fn payloads_of_failures(exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let failures = exc.getattr("failures")?;
    let payloads = PyList::empty(exc.py());
    for f in failures.try_iter()? {
        payloads.append(f?.getattr("message")?)?;
    }
    exc.setattr("messages", payloads)
}

struct Made {
    classes: Vec<Py<PyType>>,
    failed_message: Py<PyType>,
}

fn made(py: Python<'_>) -> PyResult<&Made> {
    static MADE: PyOnceLock<Made> = PyOnceLock::new();
    MADE.get_or_try_init(py, || {
        let mut classes: Vec<Py<PyType>> = Vec::with_capacity(SPECS.len());
        for spec in &SPECS {
            let bases: Vec<Bound<'_, PyType>> = spec
                .bases
                .iter()
                .map(|b| match b {
                    Base::Exception => py.get_type::<PyException>(),
                    Base::BuiltinTimeout => py.get_type::<PyTimeoutError>(),
                    Base::Of(c) => classes[*c as usize].bind(py).clone(),
                })
                .collect();
            let namespace = PyDict::new(py);
            namespace.set_item("__module__", MODULE)?;
            namespace.set_item("__doc__", spec.doc)?;
            let cls = py.get_type::<PyType>().call1((spec.name, PyTuple::new(py, bases)?, namespace))?;
            let cls = cls.cast_into::<PyType>()?;
            if let Some(fields) = spec.fields {
                // set once the class exists: the constructor passes its message on with super(cls, self)
                let init = Init { spec, fields, owner: cls.clone().unbind() };
                cls.setattr("__init__", init)?;
            }
            classes.push(cls.unbind());
        }
        Ok(Made { classes, failed_message: failed_message_class(py)? })
    })
}

/// A named tuple, as it always was: it unpacks, indexes, compares and pickles as a tuple, and has
/// `_replace`/`_asdict`; `collections.namedtuple` is what `typing.NamedTuple` builds it with too.
fn failed_message_class(py: Python<'_>) -> PyResult<Py<PyType>> {
    const FIELDS: [(&str, &str); 5] = [
        (
            "seq",
            "Its number: the ``seq``-th message the connection accepted (every ``send()`` that did not raise), from 1.",
        ),
        ("message", "The payload as sent: ``str`` for a text message, ``bytes`` for a binary one."),
        ("reason", "Why it failed."),
        ("code", "1009 when the server closed with \"message too big\" after it."),
        (
            "losses",
            "The connection losses it was blamed for (the poison rule: losses that confirmed nothing and looked\n\
             like the server failing on it).",
        ),
    ];
    let kw = PyDict::new(py);
    kw.set_item("defaults", (py.None(), py.None()))?;
    kw.set_item("module", MODULE)?;
    let names: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
    let cls = py.import("collections")?.getattr("namedtuple")?.call(("FailedMessage", names), Some(&kw))?;
    cls.setattr(
        "__doc__",
        "One message that was removed from the send queue and will not be re-sent (an item of\n\
         ``SendFailed.failures``).",
    )?;
    for (name, doc) in FIELDS {
        cls.getattr(name)?.setattr("__doc__", doc)?;
    }
    Ok(cls.cast_into::<PyType>()?.unbind())
}

/// `tether.FailedMessage(seq, message, reason, code, losses)`: one item of `SendFailed.failures`.
pub fn failed_message<'py>(
    py: Python<'py>,
    seq: u64,
    message: Py<PyAny>,
    reason: &str,
    code: Option<u16>,
    losses: Option<u32>,
) -> PyResult<Bound<'py, PyAny>> {
    made(py)?.failed_message.bind(py).call1((seq, message, reason, code, losses))
}

/// Adds the classes and `FailedMessage` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let made = made(m.py())?;
    for (spec, cls) in SPECS.iter().zip(&made.classes) {
        m.add(spec.name, cls)?;
    }
    m.add("FailedMessage", &made.failed_message)
}

/// The ``__init__`` of a tether exception: ``(message, *, <attributes>)``, each attribute stored with its
/// default when left out.
#[pyclass(name = "ExceptionInit", module = "tether._native", frozen)]
struct Init {
    spec: &'static Spec,
    fields: &'static [Field],
    /// The class whose `__init__` this is, for `super()`.
    owner: Py<PyType>,
}

#[pymethods]
impl Init {
    #[pyo3(signature = (this, *args, **kwargs))]
    fn __call__(
        &self,
        this: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let py = this.py();
        let name = self.spec.name;
        let keyword = |k: &str| kwargs.map(|kw| kw.get_item(k)).transpose().map(Option::flatten);
        let message = match (args.len(), keyword("message")?) {
            (1, None) => args.get_item(0)?,
            (0, Some(m)) => m,
            (0, None) => {
                return Err(PyTypeError::new_err(format!(
                    "{name}.__init__() missing 1 required positional argument: 'message'"
                )))
            }
            (1, Some(_)) => {
                return Err(PyTypeError::new_err(format!(
                    "{name}.__init__() got multiple values for argument 'message'"
                )))
            }
            (n, _) => {
                return Err(PyTypeError::new_err(format!(
                    "{name}.__init__() takes 2 positional arguments but {} were given",
                    n + 1
                )))
            }
        };
        if let Some(kw) = kwargs {
            for k in kw.keys() {
                let k: String = k.extract()?;
                if k != "message" && !self.fields.iter().any(|f| f.name() == k) {
                    return Err(PyTypeError::new_err(format!(
                        "{name}.__init__() got an unexpected keyword argument '{k}'"
                    )));
                }
            }
        }
        PySuper::new(self.owner.bind(py), this)?.call_method1("__init__", (message,))?;
        for f in self.fields {
            this.setattr(f.name(), f.value(py, keyword(f.name())?)?)?;
        }
        match self.spec.derived {
            Some(derive) => derive(this),
            None => Ok(()),
        }
    }

    /// Bound to an instance as a method is (`self.__init__`, `super().__init__` in a subclass).
    fn __get__(
        slf: Bound<'_, Self>,
        instance: Option<Bound<'_, PyAny>>,
        _owner: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match instance {
            None => Ok(slf.into_any().unbind()),
            Some(obj) => {
                static METHOD_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                let py = slf.py();
                Ok(METHOD_TYPE.import(py, "types", "MethodType")?.call1((slf, obj))?.unbind())
            }
        }
    }

    /// What `help()` and `inspect.signature()` show; stubtest checks the stub's constructor against it.
    #[getter]
    fn __signature__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut params = vec![
            ("self", Kind::PositionalOrKeyword, no_default(py)?),
            ("message", Kind::PositionalOrKeyword, no_default(py)?),
        ];
        for f in self.fields {
            params.push((f.name(), Kind::KeywordOnly, f.default(py)?));
        }
        super::super::signature::signature(py, params)
    }

    fn __repr__(&self) -> String {
        format!("<function {}.__init__>", self.spec.name)
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        "__init__"
    }

    #[getter]
    fn __qualname__(&self) -> String {
        format!("{}.__init__", self.spec.name)
    }
}

const GAVE_UP_DOC: &str = "A retry loop stopped: fatal error, attempt budget or deadline exhausted.

``attempts`` is the number of attempts made in the final outage, ``last_error`` the exception (or
message) of the last one, ``reason`` one of \"fatal error\", \"attempt budget exhausted\", \"deadline exceeded\",
\"connect_timeout exceeded\".

Raised by a ``tether.connect`` connection, it also says what the connection never delivered, the same
lists from every call that raises it (``send``, ``flush``, ``recv``, ``async for``): ``messages``, the
payloads of every message it accepted that the server never confirmed, in send order (the server may
have read some of them: re-send them on a new connection if at-least-once suits them), and
``failures``, a ``FailedMessage`` for every message that failed (close 1009, the poison rule) that no
``flush()`` reported yet. A message is in one list at most; every message sent and in neither was
confirmed or raised ``SendFailed`` already.";

const CONNECTION_CLOSED_DOC: &str =
    "The connection is closed (by ``aclose``, by the server with a code of ``final_close_codes``, or
after giving up); ``code``/``reason`` when known. As the ``last_error`` of a ``GaveUp``, it describes
the last failure: ``code`` is the server's close code, ``http_status`` the HTTP status with which
the server refused the WebSocket handshake (e.g. 404), None when neither applies.

Raised by a connection that ended, ``messages`` and ``failures`` say what it never delivered, as for
``GaveUp``: after a final close code, and after ``aclose()`` when its ``close_timeout`` ran out before
the server confirmed everything (or it closed during an outage). Empty on a ``GaveUp``'s
``last_error``.";

const CONNECT_FAILED_DOC: &str =
    "The connection never opened: every attempt of its first connect failed before it was established
(a refused or timed-out TCP connect, a DNS or TLS failure, an HTTP answer other than 101, an
``on_connect`` that raised). It is the ``last_error`` of the ``GaveUp`` that ends such a first
connect, and says what the last attempt met; a connection that had opened reports its end as a plain
``ConnectionClosed``. A subclass of ``ConnectionClosed``, so ``except ConnectionClosed`` and
``.http_status`` work for both.";

const SEND_FAILED_DOC: &str =
    "Messages were removed from the send queue and will not be re-sent: the server closed with 1009
(message too big) after one, or one was the oldest unconfirmed message at 3 connection losses that
confirmed nothing and looked like the server failing on it (no close frame, a timeout, or a close 1002,
1003, 1007, 1008 or 1011; re-sent alone after the first), so the server likely dies reading it.

``messages``: every failed message's payload (``str`` or ``bytes``, as sent), in send order, to re-send
what should go again; ``failures``: one ``FailedMessage`` per message, same order (``seq``, ``message``,
``reason``, ``code``, ``losses``). ``size``, ``code`` and ``losses`` are those of the first. A ``send()``
that fails before it resolved names its own message; ``flush()`` names every message sent before it
that failed after its ``send()`` resolved.";
