//! Bindings for `crate::nats`: the NATS client protocol's encoders and the server-stream
//! decoder, for the Python NATS transport (`tether.node.transport.nats`).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::buffer::Buf;
use super::errors::{FrameError, InvalidArgumentError};
use crate::nats::{self, NatsError, ServerOp};

fn to_py(e: NatsError) -> PyErr {
    match e {
        NatsError::Protocol(_) => FrameError::new_err(e.to_string()),
        NatsError::BadSubject(_) | NatsError::TooLarge { .. } => {
            InvalidArgumentError::new_err(e.to_string())
        }
    }
}

/// Streaming decoder of what a NATS server sends. `feed` returns the operations the bytes
/// complete, in order, as tuples: `("MSG", subject, sid, reply or None, payload)`,
/// `("INFO", json)`, `("PING",)`, `("PONG",)`, `("+OK",)`, `("-ERR", message)`; a stream that
/// breaks the protocol raises FrameError (then and on every later call), after the operations
/// before the fault were returned by earlier calls.
#[pyclass(module = "tether._core", name = "NatsDecoder")]
pub(crate) struct PyNatsDecoder {
    inner: nats::Decoder,
}

#[pymethods]
impl PyNatsDecoder {
    #[new]
    #[pyo3(signature = (max_payload = 1 << 20))]
    fn new(max_payload: usize) -> Self {
        Self {
            inner: nats::Decoder::new(max_payload),
        }
    }

    /// The server's `max_payload` (from its INFO).
    fn set_max_payload(&mut self, max_payload: usize) {
        self.inner.set_max_payload(max_payload);
    }

    fn feed<'py>(&mut self, py: Python<'py>, data: Buf<'py>) -> PyResult<Bound<'py, PyList>> {
        self.inner.feed(data.as_bytes());
        let out = PyList::empty(py);
        loop {
            let op = match self.inner.next_op() {
                Ok(Some(op)) => op,
                Err(e) if out.is_empty() => return Err(to_py(e)),
                // Nothing more yet; or a fault: what came before it is handed over, and the
                // next call raises.
                Ok(None) | Err(_) => return Ok(out),
            };
            let item = match op {
                ServerOp::Msg {
                    subject,
                    sid,
                    reply,
                    payload,
                    ..
                } => PyTuple::new(
                    py,
                    [
                        "MSG".into_pyobject(py)?.into_any(),
                        subject.into_pyobject(py)?.into_any(),
                        sid.into_pyobject(py)?.into_any(),
                        reply.into_pyobject(py)?.into_any(),
                        PyBytes::new(py, &payload).into_any(),
                    ],
                )?,
                ServerOp::Info(json) => PyTuple::new(
                    py,
                    [
                        "INFO".into_pyobject(py)?.into_any(),
                        json.into_pyobject(py)?.into_any(),
                    ],
                )?,
                ServerOp::Err(text) => PyTuple::new(
                    py,
                    [
                        "-ERR".into_pyobject(py)?.into_any(),
                        text.into_pyobject(py)?.into_any(),
                    ],
                )?,
                ServerOp::Ping => PyTuple::new(py, ["PING"])?,
                ServerOp::Pong => PyTuple::new(py, ["PONG"])?,
                ServerOp::Ok => PyTuple::new(py, ["+OK"])?,
            };
            out.append(item)?;
        }
    }

    /// Bytes fed and not yet decoded.
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}

/// `CONNECT json`.
#[pyfunction]
fn nats_connect<'py>(py: Python<'py>, json: &str) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    nats::connect(&mut out, json);
    PyBytes::new(py, &out)
}

/// `PUB subject [reply] len`, the payload and its end (InvalidArgumentError: a bad subject, or
/// a payload over `max_payload`).
#[pyfunction]
#[pyo3(signature = (subject, payload, max_payload, reply = None))]
fn nats_publish<'py>(
    py: Python<'py>,
    subject: &str,
    payload: Buf<'py>,
    max_payload: usize,
    reply: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    nats::publish(&mut out, subject, reply, payload.as_bytes(), max_payload).map_err(to_py)?;
    Ok(PyBytes::new(py, &out))
}

/// `SUB subject [queue] sid` (InvalidArgumentError: a bad subject).
#[pyfunction]
#[pyo3(signature = (subject, sid, queue = None))]
fn nats_subscribe<'py>(
    py: Python<'py>,
    subject: &str,
    sid: u64,
    queue: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    nats::subscribe(&mut out, subject, queue, sid).map_err(to_py)?;
    Ok(PyBytes::new(py, &out))
}

/// `UNSUB sid`.
#[pyfunction]
fn nats_unsubscribe(py: Python<'_>, sid: u64) -> Bound<'_, PyBytes> {
    let mut out = Vec::new();
    nats::unsubscribe(&mut out, sid);
    PyBytes::new(py, &out)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNatsDecoder>()?;
    m.add_function(wrap_pyfunction!(nats_connect, m)?)?;
    m.add_function(wrap_pyfunction!(nats_publish, m)?)?;
    m.add_function(wrap_pyfunction!(nats_subscribe, m)?)?;
    m.add_function(wrap_pyfunction!(nats_unsubscribe, m)?)?;
    m.add("NATS_PING", PyBytes::new(m.py(), nats::PING))?;
    m.add("NATS_PONG", PyBytes::new(m.py(), nats::PONG))?;
    Ok(())
}
