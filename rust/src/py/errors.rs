//! The one mapping from `crate::Error` to the exception classes of `tether.core.errors`.

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::error::Error;

pyo3::import_exception!(tether.core.errors, FrameError);
pyo3::import_exception!(tether.core.errors, FrameTooLargeError);
pyo3::import_exception!(tether.core.errors, RouteError);
pyo3::import_exception!(tether.core.errors, DecryptError);
pyo3::import_exception!(tether.core.errors, ReplayError);
pyo3::import_exception!(tether.core.errors, HandshakeError);
pyo3::import_exception!(tether.core.errors, NonceExhaustedError);
pyo3::import_exception!(tether.core.errors, InvalidArgumentError);
pyo3::import_exception!(tether.core.errors, StateError);
pyo3::import_exception!(tether.core.errors, BrokenError);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::FrameTooLarge { .. } => FrameTooLargeError::new_err(msg),
            Error::Frame(_) => FrameError::new_err(msg),
            Error::Route(_) => RouteError::new_err(msg),
            Error::Decrypt => DecryptError::new_err(msg),
            Error::Replay { .. } => ReplayError::new_err(msg),
            Error::Handshake(_) => HandshakeError::new_err(msg),
            Error::NonceExhausted => NonceExhaustedError::new_err(msg),
            Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
            Error::State(_) => StateError::new_err(msg),
            Error::Broken => BrokenError::new_err(msg),
        }
    }
}

/// A frame error that also hands back the frames completed before it, so nothing is lost.
pub(crate) fn frame_error_with_frames(
    py: Python<'_>,
    e: Error,
    frames: &Bound<'_, PyList>,
) -> PyErr {
    let err: PyErr = e.into();
    // Best effort: if setting the attribute fails the error itself is still raised.
    let _ = err.value(py).setattr("frames", frames);
    err
}

/// The exception instance for `e`, to be returned (not raised) by batch calls.
pub(crate) fn instance(py: Python<'_>, e: Error) -> Py<PyAny> {
    let err: PyErr = e.into();
    err.into_value(py).into_any()
}
