//! Bindings for `crate::frame` and `crate::route`.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::buffer::Buf;
use super::errors::frame_error_with_frames;
use crate::{frame, relay, route};

/// Streaming decoder of length-prefixed frames.
#[pyclass(module = "tether._core", name = "FrameDecoder")]
pub(crate) struct PyFrameDecoder {
    inner: frame::FrameDecoder,
}

#[pymethods]
impl PyFrameDecoder {
    #[new]
    #[pyo3(signature = (max_frame_len = 1 << 20))]
    fn new(max_frame_len: u32) -> Self {
        Self {
            inner: frame::FrameDecoder::new(max_frame_len),
        }
    }

    /// Feed the next bytes of the stream; returns the frames they complete, in order.
    fn feed<'py>(&mut self, py: Python<'py>, data: Buf<'py>) -> PyResult<Bound<'py, PyList>> {
        let frames = PyList::empty(py);
        let mut append_err = None;
        let res = self.inner.feed(data.as_bytes(), |f| {
            if append_err.is_none() {
                if let Err(e) = frames.append(PyBytes::new(py, f)) {
                    append_err = Some(e);
                }
            }
        });
        if let Some(e) = append_err {
            return Err(e);
        }
        match res {
            Ok(()) => Ok(frames),
            Err(e) => Err(frame_error_with_frames(py, e, &frames)),
        }
    }

    /// Feed the next bytes of a stream of frames that each carry a routed message: returns the
    /// messages they complete, decoded, in order — `(onward, return_route, payload)`, or the
    /// `RouteError` of a malformed one in its place — with one copy of each payload (no frame
    /// copy in between). Empty frames (keepalives) are skipped.
    fn feed_messages<'py>(
        &mut self,
        py: Python<'py>,
        data: Buf<'py>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut append_err = None;
        let res = self.inner.feed(data.as_bytes(), |f| {
            if append_err.is_some() || f.is_empty() {
                return;
            }
            let item = match route::decode(f) {
                Ok(m) => message_to_py(py, &m).map(Bound::into_any),
                Err(e) => Ok(PyErr::from(e).into_value(py).into_bound(py).into_any()),
            };
            if let Err(e) = item.and_then(|i| out.append(i)) {
                append_err = Some(e);
            }
        });
        if let Some(e) = append_err {
            return Err(e);
        }
        match res {
            Ok(()) => Ok(out),
            Err(e) => Err(frame_error_with_frames(py, e, &out)),
        }
    }

    #[getter]
    fn max_frame_len(&self) -> u32 {
        self.inner.max_frame_len()
    }

    #[setter]
    fn set_max_frame_len(&mut self, value: u32) {
        self.inner.set_max_frame_len(value);
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    #[getter]
    fn broken(&self) -> bool {
        self.inner.is_broken()
    }

    fn __repr__(&self) -> String {
        format!(
            "FrameDecoder(max_frame_len={}, buffered={}, broken={})",
            self.inner.max_frame_len(),
            self.inner.buffered(),
            if self.inner.is_broken() {
                "True"
            } else {
                "False"
            }
        )
    }
}

/// Encode one frame: a 4-byte big-endian length, then the payload.
#[pyfunction]
fn encode_frame<'py>(py: Python<'py>, payload: Buf<'py>) -> PyResult<Bound<'py, PyBytes>> {
    let p = payload.as_bytes();
    PyBytes::new_with(py, frame::encoded_len(p.len()), |out| {
        Ok(frame::encode_to_slice(p, out)?)
    })
}

/// Encode many frames into one buffer, ready to write to a stream.
#[pyfunction]
fn encode_frames<'py>(py: Python<'py>, payloads: Vec<Buf<'py>>) -> PyResult<Bound<'py, PyBytes>> {
    let total: usize = payloads
        .iter()
        .map(|p| frame::encoded_len(p.as_bytes().len()))
        .sum();
    PyBytes::new_with(py, total, |out| {
        let mut pos = 0;
        for p in &payloads {
            let p = p.as_bytes();
            let n = frame::encoded_len(p.len());
            frame::encode_to_slice(p, &mut out[pos..pos + n])?;
            pos += n;
        }
        Ok(())
    })
}

type PyRoute<'py> = Vec<(u16, Buf<'py>)>;

fn addresses<'a>(route: &'a [(u16, Buf<'_>)]) -> Vec<route::Address<'a>> {
    route
        .iter()
        .map(|(t, v)| route::Address {
            transport: *t,
            value: v.as_bytes(),
        })
        .collect()
}

/// The onward route of a message forwarded by a relay's forwarder whose claimer is at `route`
/// (`crate::relay::forward_onward`: the forwarder's address, first in `onward`, replaced).
#[pyfunction]
fn forward_onward<'py>(
    py: Python<'py>,
    route: PyRoute<'py>,
    onward: PyRoute<'py>,
) -> PyResult<Bound<'py, PyList>> {
    let out = relay::forward_onward(addresses(&route), &addresses(&onward))?;
    route_to_py(py, &out)
}

/// Encode a routed message (protocol version 1).
#[pyfunction]
fn encode_message<'py>(
    py: Python<'py>,
    onward: PyRoute<'py>,
    return_route: PyRoute<'py>,
    payload: Buf<'py>,
) -> PyResult<Bound<'py, PyBytes>> {
    encode_routed(py, &onward, &return_route, payload.as_bytes(), false)
}

/// Encode a routed message, as one frame (4-byte length, then the message) if `framed`: the
/// payload is copied once, into the result.
fn encode_routed<'py>(
    py: Python<'py>,
    onward: &PyRoute<'py>,
    return_route: &PyRoute<'py>,
    payload: &[u8],
    framed: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let (o, r) = (addresses(onward), addresses(return_route));
    let len = route::encoded_len(&o, &r, payload.len())?;
    if !framed {
        return PyBytes::new_with(py, len, |out| {
            Ok(route::encode_to_slice(&o, &r, payload, out)?)
        });
    }
    let header = frame::header(len)?;
    PyBytes::new_with(py, frame::encoded_len(len), |out| {
        out[..frame::HEADER_LEN].copy_from_slice(&header);
        Ok(route::encode_to_slice(
            &o,
            &r,
            payload,
            &mut out[frame::HEADER_LEN..],
        )?)
    })
}

pub(crate) fn route_to_py<'py>(
    py: Python<'py>,
    route: &[route::Address<'_>],
) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<Bound<'py, PyTuple>> = route
        .iter()
        .map(|a| {
            PyTuple::new(
                py,
                [
                    a.transport.into_pyobject(py)?.into_any(),
                    PyBytes::new(py, a.value).into_any(),
                ],
            )
        })
        .collect::<PyResult<_>>()?;
    PyList::new(py, items)
}

pub(crate) fn message_to_py<'py>(
    py: Python<'py>,
    m: &route::RoutedMessage<'_>,
) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            route_to_py(py, &m.onward)?.into_any(),
            route_to_py(py, &m.return_route)?.into_any(),
            PyBytes::new(py, m.payload).into_any(),
        ],
    )
}

/// Decode a routed message: `(onward, return_route, payload)`.
#[pyfunction]
fn decode_message<'py>(py: Python<'py>, data: Buf<'py>) -> PyResult<Bound<'py, PyTuple>> {
    let m = route::decode(data.as_bytes())?;
    message_to_py(py, &m)
}

/// Encode a routed message as one frame (4-byte length, then the message): one copy of the
/// payload, straight into the buffer written to the socket.
#[pyfunction]
fn encode_message_frame<'py>(
    py: Python<'py>,
    onward: PyRoute<'py>,
    return_route: PyRoute<'py>,
    payload: Buf<'py>,
) -> PyResult<Bound<'py, PyBytes>> {
    encode_routed(py, &onward, &return_route, payload.as_bytes(), true)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFrameDecoder>()?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(encode_frames, m)?)?;
    m.add_function(wrap_pyfunction!(encode_message, m)?)?;
    m.add_function(wrap_pyfunction!(forward_onward, m)?)?;
    m.add_function(wrap_pyfunction!(decode_message, m)?)?;
    m.add_function(wrap_pyfunction!(encode_message_frame, m)?)?;
    m.add("ROUTE_VERSION", route::VERSION)?;
    m.add("MAX_HOPS", route::MAX_HOPS)?;
    m.add("FRAME_HEADER_LEN", frame::HEADER_LEN)?;
    Ok(())
}
