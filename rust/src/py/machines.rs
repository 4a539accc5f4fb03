//! Bindings for the sans-IO state machines that the Python data plane drives (the engine drives
//! the same ones in Rust): a portal session, a channel's reassembly, a link's timers; and the
//! protocol constants, defined once in the crate.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView, PySlice};

use super::buffer::Buf;
use crate::error::Error;
use crate::link::{self, Timeouts, Verdict};
use crate::portal::{self, Action, Control};
use crate::reassembly::{self, Fragment, Reassembler};

/// What a portal session asks its driver to do (see `rust/src/portal/session.rs`).
#[pyclass(module = "tether._core", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ActionKind {
    /// Send EOF (`message`, its payload) to the peer.
    #[pyo3(name = "SEND_EOF")]
    SendEof,
    /// Send ACK (`message`, its payload) to the peer.
    #[pyo3(name = "SEND_ACK")]
    SendAck,
    /// Send CLOSE (`message`, its payload; `reason`) to the peer.
    #[pyo3(name = "SEND_CLOSE")]
    SendClose,
    /// Send again every message of `retained()`, in order.
    #[pyo3(name = "RESEND")]
    Resend,
    /// Write `pending()` to the socket, report `wrote()`, then call `flushed()`.
    #[pyo3(name = "WRITE")]
    Write,
    /// Shut the socket's write half.
    #[pyo3(name = "SHUT_WRITE")]
    ShutWrite,
    /// Read the socket again (credit came back).
    #[pyo3(name = "RESUME_READ")]
    ResumeRead,
    /// The session ended (`reason` empty: in order; `abort`: reset the socket).
    #[pyo3(name = "CLOSED")]
    Closed,
}

/// One action of a portal session.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct PortalAction {
    kind: ActionKind,
    message: Py<PyBytes>,
    reason: String,
    abort: bool,
}

fn actions(py: Python<'_>, out: &mut Vec<Action>) -> PyResult<Vec<Py<PortalAction>>> {
    out.drain(..)
        .map(|a| {
            let message = match &a {
                Action::Send(c) => c.encode(),
                _ => Vec::new(),
            };
            let (kind, reason, abort) = match a {
                Action::Send(Control::Eof(_)) => (ActionKind::SendEof, String::new(), false),
                Action::Send(Control::Ack { .. }) => (ActionKind::SendAck, String::new(), false),
                Action::Send(Control::Close(r)) => (ActionKind::SendClose, r, false),
                Action::Resend => (ActionKind::Resend, String::new(), false),
                Action::Write => (ActionKind::Write, String::new(), false),
                Action::ShutWrite => (ActionKind::ShutWrite, String::new(), false),
                Action::ResumeRead => (ActionKind::ResumeRead, String::new(), false),
                Action::Closed { reason, abort } => (ActionKind::Closed, reason, abort),
            };
            Py::new(
                py,
                PortalAction {
                    kind,
                    message: PyBytes::new(py, &message).unbind(),
                    reason,
                    abort,
                },
            )
        })
        .collect()
}

/// What `PortalSession.on_peer` answers: the span of a DATA's stream bytes in the payload, and
/// the actions.
type PeerOutcome = (Option<(usize, usize)>, Vec<Py<PortalAction>>);

/// A portal session's rules (`crate::portal::Session`) for a Python driver. Times are
/// `time.monotonic()` seconds.
#[pyclass(module = "tether._core", name = "PortalSession")]
pub(crate) struct PyPortalSession {
    inner: portal::Session,
    out: Vec<Action>,
}

#[pymethods]
impl PyPortalSession {
    #[new]
    fn new(window: u64, resume_timeout: f64, established: bool) -> Self {
        Self {
            inner: portal::Session::new(window, resume_timeout, established),
            out: Vec::new(),
        }
    }

    /// The most bytes to read from the socket now (0: wait).
    fn read_allowance(&mut self) -> usize {
        self.inner.read_allowance()
    }

    fn wait_read(&mut self) {
        self.inner.wait_read();
    }

    /// `data` was read: send it as one DATA behind the header returned.
    fn on_read<'py>(&mut self, py: Python<'py>, data: Buf<'_>, now: f64) -> Bound<'py, PyBytes> {
        let seq = self.inner.on_read(data.as_bytes(), now);
        PyBytes::new(py, &portal::data_header(seq))
    }

    fn on_read_eof(&mut self, py: Python<'_>, now: f64) -> PyResult<Vec<Py<PortalAction>>> {
        self.inner.on_read_eof(now, &mut self.out);
        actions(py, &mut self.out)
    }

    /// A message from the peer: `(data, actions)`; `data` is the slice of `payload` with the
    /// DATA's stream bytes (report it with `data`), or None.
    fn on_peer(&mut self, py: Python<'_>, payload: Buf<'_>, now: f64) -> PyResult<PeerOutcome> {
        let bytes = payload.as_bytes();
        let span = self.inner.on_peer(bytes, now, &mut self.out).map(|b| {
            let start = b.as_ptr() as usize - bytes.as_ptr() as usize;
            (start, start + b.len())
        });
        Ok((span, actions(py, &mut self.out)?))
    }

    /// The timers (delayed ACK, retransmission) at `now`.
    fn on_tick(&mut self, py: Python<'_>, now: f64) -> PyResult<Vec<Py<PortalAction>>> {
        self.inner.on_tick(now, &mut self.out);
        actions(py, &mut self.out)
    }

    /// A path came back after a loss: resend now, and ask the peer to.
    fn path_restored(&mut self, py: Python<'_>, now: f64) -> PyResult<Vec<Py<PortalAction>>> {
        self.inner.path_restored(now, &mut self.out);
        actions(py, &mut self.out)
    }

    /// When `on_tick` has work next, or None.
    #[getter]
    fn deadline(&self) -> Option<f64> {
        self.inner.deadline()
    }

    /// What to send again: each message as (head, stream bytes).
    fn retained<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        self.inner
            .retained()
            .map(|(seq, b)| match b {
                Some(b) => (
                    PyBytes::new(py, &portal::data_header(seq)),
                    PyBytes::new(py, b),
                ),
                None => (
                    PyBytes::new(py, &Control::Eof(seq).encode()),
                    PyBytes::new(py, b""),
                ),
            })
            .collect()
    }

    /// A DATA body of which `written` bytes went to the socket at once: the rest is queued.
    fn data(
        &mut self,
        py: Python<'_>,
        body: Buf<'_>,
        written: usize,
    ) -> PyResult<Vec<Py<PortalAction>>> {
        self.inner.data(body.as_bytes(), written, &mut self.out);
        actions(py, &mut self.out)
    }

    /// The queued bytes to write next, or None.
    fn pending<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.pending().map(|b| PyBytes::new(py, b))
    }

    fn wrote(&mut self, n: usize) {
        self.inner.wrote(n);
    }

    fn flushed(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PortalAction>>> {
        self.inner.flushed(&mut self.out);
        actions(py, &mut self.out)
    }

    fn fail(
        &mut self,
        py: Python<'_>,
        reason: &str,
        abort: bool,
        notify: bool,
    ) -> PyResult<Vec<Py<PortalAction>>> {
        self.inner.fail(reason, abort, notify, &mut self.out);
        actions(py, &mut self.out)
    }

    #[getter]
    fn queue_empty(&self) -> bool {
        self.inner.queue_empty()
    }
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
    #[getter]
    fn sent(&self) -> u64 {
        self.inner.sent()
    }
    #[getter]
    fn received(&self) -> u64 {
        self.inner.received()
    }
    #[getter]
    fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes()
    }
    #[getter]
    fn credit(&self) -> i64 {
        self.inner.credit()
    }
}

/// A channel's fragment reassembly (`crate::reassembly::Reassembler`).
#[pyclass(module = "tether._core", name = "Reassembler")]
pub(crate) struct PyReassembler {
    inner: Reassembler,
}

#[pymethods]
impl PyReassembler {
    #[new]
    fn new() -> Self {
        Self {
            inner: Reassembler::new(),
        }
    }

    /// Add an opened fragment (`plain`: bytes, its flag byte first) sealed with `nonce`:
    /// `(message, note, refused)` — the whole message once complete (a memoryview of `plain`
    /// for a message in one piece: no copy), else None; why something was dropped, else None;
    /// and whether the fragment counts as a refused message (`ReassemblyError::refuses`).
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        plain: &Bound<'py, PyBytes>,
        nonce: u64,
    ) -> PyResult<(Option<Bound<'py, PyAny>>, Option<String>, bool)> {
        let result = self.inner.push(plain.as_bytes(), nonce);
        let note = self
            .inner
            .dropped_unfinished
            .then(|| "a fragmented message lost its end; dropped".to_string());
        Ok(match result {
            Ok(Fragment::Whole(_)) => {
                let view = PyMemoryView::from(plain.as_any())?;
                let len = isize::try_from(plain.as_bytes().len()).unwrap_or(isize::MAX);
                let whole = view.get_item(PySlice::new(py, 1, len, 1))?;
                (Some(whole), note, false)
            }
            Ok(Fragment::Joined(b)) => (Some(PyBytes::new(py, &b).into_any()), note, false),
            Ok(Fragment::More) => (None, note, false),
            Err(e) => (None, Some(e.to_string()), e.refuses()),
        })
    }

    #[getter]
    fn gathering(&self) -> bool {
        self.inner.gathering()
    }

    /// Forget what was gathered.
    fn clear(&mut self) {
        self.inner.drop_partial();
    }
}

fn secs(s: f64, what: &str) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Error::InvalidArgument(format!("{what} must be a positive number of seconds")))
}

/// A link's timers (`crate::link::LinkTimers`); `now` is `time.monotonic()`.
#[pyclass(module = "tether._core", name = "LinkTimers")]
pub(crate) struct PyLinkTimers {
    inner: link::LinkTimers,
}

#[pymethods]
impl PyLinkTimers {
    #[new]
    fn new(
        keepalive: f64,
        dead_after: f64,
        frame_timeout: f64,
        drain_timeout: f64,
        now: f64,
    ) -> PyResult<Self> {
        let timeouts = Timeouts {
            keepalive: secs(keepalive, "keepalive")?,
            dead_after: secs(dead_after, "dead_after")?,
            frame_timeout: secs(frame_timeout, "frame_timeout")?,
            drain_timeout: secs(drain_timeout, "drain_timeout")?,
        };
        Ok(Self {
            inner: link::LinkTimers::new(timeouts, secs(now, "now")?),
        })
    }

    fn received(&mut self, now: f64, partial: bool) -> PyResult<()> {
        self.inner.received(secs(now, "now")?, partial);
        Ok(())
    }

    fn sent(&mut self, now: f64) -> PyResult<()> {
        self.inner.sent(secs(now, "now")?);
        Ok(())
    }

    fn send_blocked(&mut self, now: f64) -> PyResult<()> {
        self.inner.send_blocked(secs(now, "now")?);
        Ok(())
    }

    fn delivering(&mut self, on: bool, now: f64) -> PyResult<()> {
        self.inner.delivering(on, secs(now, "now")?);
        Ok(())
    }

    /// Seconds until a keepalive is due.
    fn keepalive_in(&self, now: f64) -> PyResult<f64> {
        Ok(self.inner.keepalive_in(secs(now, "now")?).as_secs_f64())
    }

    /// `(reason, keepalive, next)`: the reason to close the link (else None), whether a
    /// keepalive is due, and the seconds until the timers want another look.
    fn check(&self, now: f64, queued: bool) -> PyResult<(Option<String>, bool, f64)> {
        Ok(match self.inner.check(secs(now, "now")?, queued) {
            Verdict::Dead(reason) => (Some(reason), false, 0.0),
            Verdict::Alive { keepalive, next } => (None, keepalive, next.as_secs_f64()),
        })
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ActionKind>()?;
    m.add_class::<PortalAction>()?;
    m.add_class::<PyPortalSession>()?;
    m.add_class::<PyReassembler>()?;
    m.add_class::<PyLinkTimers>()?;
    m.add("KIND_DATA", portal::KIND_DATA)?;
    m.add("KIND_ERROR", portal::KIND_ERROR)?;
    m.add("PORTAL_OPEN", portal::T_OPEN)?;
    m.add("PORTAL_DATA", portal::T_DATA)?;
    m.add("PORTAL_EOF", portal::T_EOF)?;
    m.add("PORTAL_CLOSE", portal::T_CLOSE)?;
    m.add("PORTAL_ACK", portal::T_ACK)?;
    m.add("PORTAL_MAX_DATA", portal::MAX_DATA)?;
    m.add("PORTAL_MAX_REASON", portal::MAX_REASON)?;
    m.add("PORTAL_MIN_CHARGE", portal::MIN_CHARGE)?;
    m.add("PORTAL_ENDED_MEMORY", portal::ENDED_MEMORY)?;
    m.add("FRAGMENT_FIRST", reassembly::FIRST)?;
    m.add("FRAGMENT_LAST", reassembly::LAST)?;
    m.add("CHANNEL_MAX_MESSAGE", reassembly::MAX_MESSAGE)?;
    Ok(())
}
