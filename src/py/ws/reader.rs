//! Reading a connection's socket: the thread's read buffer, how a read can end, and the `Reader`.
//!
//! asyncio's transport reads through two Python frames per readable event (`_read_ready`,
//! `_read_ready__get_buffer`, then `recv_into` and the protocol's `get_buffer` and `buffer_updated`); a
//! `Reader` is the callable the loop runs instead, where it can watch a descriptor (`add_reader`): one
//! `recv(2)` into the thread's read buffer, then the bytes go to the connection.
//!
//! The transport keeps the socket and everything but reading (writes it holds, flow control, close):
//! its reading is paused, and the reader watches a duplicate of its descriptor, since asyncio and uvloop
//! refuse `add_reader` on a descriptor a transport owns. The duplicate keeps the connection open, so it
//! is closed whenever the link goes: with the transport (`stop`), at the end of what can be read, or
//! when the connection itself is gone.

#[cfg(unix)]
use std::sync::atomic::{AtomicI32, Ordering};
#[cfg(unix)]
use std::sync::{Arc, Weak};

use pyo3::prelude::*;
use pyo3::types::PyByteArray;

#[cfg(unix)]
use super::Conn;

/// How the server ended the TCP connection.
pub(super) enum End {
    Eof,
    Reset,
    Error(String),
}

/// Bytes read per call into the shared buffer: a flood is read in few system calls.
const READ_SIZE: usize = 256 << 10;

thread_local! {
    static READ_BUFFER: std::cell::RefCell<Option<Py<PyByteArray>>> = const { std::cell::RefCell::new(None) };
}

/// Where every read of the thread lands, the reader's and a transport's (`get_buffer`): one buffer per
/// loop thread, shared by its connections, as each read is handled before the next one is made.
pub(super) fn read_buffer(py: Python<'_>) -> PyResult<Py<PyByteArray>> {
    READ_BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if let Some(buf) = b.as_ref() {
            return Ok(buf.clone_ref(py));
        }
        let buf = PyByteArray::new_with(py, READ_SIZE, |_| Ok(()))?.unbind();
        *b = Some(buf.clone_ref(py));
        Ok(buf)
    })
}

#[cfg(unix)]
#[pyclass(module = "tether._native", frozen)]
pub(super) struct Reader {
    conn: Weak<Conn>,
    id: u64,
    /// The duplicate descriptor; -1 once closed.
    fd: AtomicI32,
    event_loop: Py<PyAny>,
}

#[cfg(unix)]
impl Reader {
    /// Read the socket `fd` of `transport` (link `id`) in the transport's stead. None where the loop
    /// cannot watch a descriptor (a loop without `add_reader`): the transport keeps reading.
    pub(super) fn start(
        py: Python<'_>,
        conn: &Arc<Conn>,
        id: u64,
        transport: &Bound<'_, PyAny>,
        fd: i32,
    ) -> Option<Py<Reader>> {
        let el = conn.event_loop(py)?;
        // SAFETY: dup(2) of the transport's open socket; the copy is this reader's to close
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // (dropped on failure, the reader closes the duplicate)
        let reader = Py::new(
            py,
            Reader { conn: Arc::downgrade(conn), id, fd: AtomicI32::new(dup), event_loop: el.clone().unbind() },
        )
        .ok()?;
        let watched = el.call_method1(pyo3::intern!(py, "add_reader"), (dup, reader.clone_ref(py))).is_ok();
        let paused = watched && transport.call_method0(pyo3::intern!(py, "pause_reading")).is_ok();
        if !paused {
            // the transport reads, as it would without a reader
            reader.get().stop(py);
            return None;
        }
        // asyncio before Python 3.11.4 (python/cpython#103607) and uvloop start the transport's reading
        // after `connection_made` even when it paused there (asyncio in a callback it scheduled before,
        // uvloop as `connection_made` returns): paused again once that ran, else a full inbound buffer
        // would pause only this reader (meanwhile both read: the same bytes, in order)
        if let Ok(again) = Py::new(py, PauseAgain(transport.clone().unbind())) {
            let _ = el.call_method1(pyo3::intern!(py, "call_soon"), (again,));
        }
        Some(reader)
    }

    /// Stop watching and close the duplicate (the transport closes the socket itself).
    pub(super) fn stop(&self, py: Python<'_>) {
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd < 0 {
            return;
        }
        // a loop closed already holds no watch; the descriptor is closed either way
        let _ = self.event_loop.bind(py).call_method1(pyo3::intern!(py, "remove_reader"), (fd,));
        // SAFETY: the duplicate is this reader's own and no longer watched
        unsafe {
            libc::close(fd);
        }
    }

    /// `stop`, once the connection's lock is released (with the link's other effects).
    pub(super) fn stop_later(reader: Py<Reader>, fx: &mut super::Fx) {
        fx.stops.push(reader);
    }

    fn end(&self, py: Python<'_>, conn: &Arc<Conn>, end: End) {
        // a socket at its end stays readable: stop before the connection decides what to do
        self.stop(py);
        conn.on_end(py, self.id, end);
    }
}

#[cfg(unix)]
#[pymethods]
impl Reader {
    /// The socket is readable.
    fn __call__(&self, py: Python<'_>) {
        let fd = self.fd.load(Ordering::Acquire);
        if fd < 0 {
            return;
        }
        let Some(conn) = self.conn.upgrade() else { return self.stop(py) };
        let Ok(buf) = read_buffer(py) else { return };
        let buf = buf.bind(py);
        // SAFETY: the thread's read buffer, written only here and by the transport's reads, each handled
        // before the next one is made; nothing resizes it
        let data = unsafe { buf.as_bytes_mut() };
        // SAFETY: `data` is valid for its length; `fd` is open until `stop`, which runs on this thread
        let n = unsafe { libc::recv(fd, data.as_mut_ptr().cast(), data.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            if !conn.on_data(py, self.id, &data[..n as usize], false) {
                // a link left behind (it ended while it was being set up): nothing reads for it
                self.stop(py);
            }
            return;
        }
        if n == 0 {
            return self.end(py, &conn, End::Eof);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::ConnectionReset => self.end(py, &conn, End::Reset),
            _ => self.end(py, &conn, End::Error(e.to_string())),
        }
    }

    /// Paused while the application's inbound buffer is full (`Fx::reading`, as a transport's).
    fn pause_reading(&self, py: Python<'_>) {
        let fd = self.fd.load(Ordering::Acquire);
        if fd >= 0 {
            let _ = self.event_loop.bind(py).call_method1(pyo3::intern!(py, "remove_reader"), (fd,));
        }
    }

    fn resume_reading(slf: &Bound<'_, Self>) {
        let me = slf.get();
        let fd = me.fd.load(Ordering::Acquire);
        if fd >= 0 {
            let py = slf.py();
            let _ = me.event_loop.bind(py).call_method1(pyo3::intern!(py, "add_reader"), (fd, slf));
        }
    }
}

/// Pause the reading of `transport`, which reads although it was paused (see `PauseAgain`): resumed
/// first, since asyncio's pause flag may be set though it reads.
#[cfg(unix)]
pub(super) fn pause_again(py: Python<'_>, transport: &Bound<'_, PyAny>) {
    if transport.call_method0(pyo3::intern!(py, "is_closing")).and_then(|c| c.is_truthy()).unwrap_or(true) {
        return;
    }
    let _ = transport.call_method0(pyo3::intern!(py, "resume_reading"));
    let _ = transport.call_method0(pyo3::intern!(py, "pause_reading"));
}

/// The transport's reading, paused again one loop turn after `connection_made`.
#[cfg(unix)]
#[pyclass(module = "tether._native", frozen)]
struct PauseAgain(Py<PyAny>);

#[cfg(unix)]
#[pymethods]
impl PauseAgain {
    fn __call__(&self, py: Python<'_>) {
        pause_again(py, self.0.bind(py));
    }
}

#[cfg(unix)]
impl Drop for Reader {
    fn drop(&mut self) {
        // no loop holds it any more (it is dropped only once unwatched, or with its loop)
        let fd = *self.fd.get_mut();
        if fd >= 0 {
            // SAFETY: the duplicate is this reader's own
            unsafe {
                libc::close(fd);
            }
        }
    }
}
