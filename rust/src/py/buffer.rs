//! `Buf`: any C-contiguous Python buffer of bytes, borrowed without copying.
//!
//! `bytes` is read directly; anything else (bytearray, memoryview, mmap, array('B')…) goes
//! through the buffer protocol. `FreshBytes`: a new `bytes` object that Rust fills before Python
//! sees it. With the engine's adoption of a socket (engine.rs), the crate's only uses of `unsafe`.

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

/// A new `bytes` object of a given length whose storage Rust writes before Python sees the
/// object: `PyBytes_FromStringAndSize(NULL, n)`, so unlike `PyBytes::new_with` the storage is not
/// zeroed first, and it can be filled without the GIL (it is the caller's alone until
/// [`FreshBytes::into_bytes`]). Sealed records are written this way, straight into the objects
/// handed back: no copy after the AEAD.
pub(crate) struct FreshBytes {
    obj: Py<PyBytes>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the storage belongs to `obj`, which no other code can reach until `into_bytes` hands
// it over; moving the pointer to another thread (the GIL released) is moving that ownership.
#[allow(unsafe_code)]
unsafe impl Send for FreshBytes {}

impl FreshBytes {
    /// A `bytes` of `len` (> 0) bytes, its contents to be written through [`Self::storage`].
    pub(crate) fn new(py: Python<'_>, len: usize) -> PyResult<Self> {
        if len == 0 {
            // CPython shares one empty `bytes` object: never hand out its storage.
            return Err(pyo3::exceptions::PyValueError::new_err(
                "FreshBytes needs a positive length",
            ));
        }
        let n = isize::try_from(len)
            .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("too large for bytes"))?;
        #[allow(unsafe_code)]
        // SAFETY: PyBytes_FromStringAndSize with NULL returns a new reference to a fresh bytes
        // object of `n` bytes (or NULL with an exception set, which from_owned_ptr_or_err turns
        // into the error); PyBytes_AsString on a bytes object returns its storage, `n` bytes
        // long, valid as long as the object lives (we own a reference).
        unsafe {
            let raw = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), n);
            let obj = Bound::from_owned_ptr_or_err(py, raw)?.downcast_into_unchecked::<PyBytes>();
            let ptr = pyo3::ffi::PyBytes_AsString(obj.as_ptr()).cast::<u8>();
            Ok(Self {
                obj: obj.unbind(),
                ptr,
                len,
            })
        }
    }

    /// The object's storage, to be written whole before [`Self::into_bytes`]; its contents are
    /// unspecified until then, so a writer must not read a byte it has not written (the record
    /// sealer writes each byte before it reads it).
    pub(crate) fn storage(&mut self) -> &mut [u8] {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` is valid for `len` bytes for as long as `obj` lives (it lives as long as
        // `self`), nothing else reaches the object yet, and `&mut self` makes this borrow unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr, self.len)
        }
    }

    /// The object, once written.
    pub(crate) fn into_bytes(self, py: Python<'_>) -> Bound<'_, PyBytes> {
        self.obj.into_bound(py)
    }
}
