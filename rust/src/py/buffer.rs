//! `Buf`: any C-contiguous Python buffer of bytes, borrowed without copying.
//!
//! `bytes` is read directly; anything else (bytearray, memoryview, mmap, array('B')…) goes
//! through the buffer protocol. This is the crate's one use of `unsafe`.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub(crate) enum Buf<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buffer(PyBuffer<u8>),
}

impl<'py> FromPyObject<'py> for Buf<'py> {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = ob.downcast::<PyBytes>() {
            return Ok(Buf::Bytes(b.clone()));
        }
        let buf = PyBuffer::<u8>::get(ob).map_err(|_| {
            PyTypeError::new_err(format!(
                "expected bytes or a bytes-like buffer, got {}",
                ob.get_type()
                    .name()
                    .map_or_else(|_| "?".to_string(), |n| n.to_string())
            ))
        })?;
        if !buf.is_c_contiguous() {
            return Err(PyTypeError::new_err("the buffer must be C-contiguous"));
        }
        Ok(Buf::Buffer(buf))
    }
}

impl Buf<'_> {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Buf::Bytes(b) => b.as_bytes(),
            Buf::Buffer(buf) => {
                let len = buf.len_bytes();
                if len == 0 {
                    return &[];
                }
                #[allow(unsafe_code)]
                // SAFETY: `buf` holds a buffer export for as long as this `Buf` lives, which keeps
                // the memory alive and prevents resizing (e.g. of a bytearray); the export is
                // C-contiguous and `len_bytes()` long with item size 1 (PyBuffer<u8> checked the
                // format). As in pyca/cryptography, the contents may still be changed by another
                // thread while we read them; that can only change the bytes we compute with.
                unsafe {
                    std::slice::from_raw_parts(buf.buf_ptr().cast::<u8>().cast_const(), len)
                }
            }
        }
    }
}
