//! Bindings for `crate::aead`.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffer::Buf;
use super::maybe_detached;
use crate::aead::{Algorithm, Key, NONCE_LEN, TAG_LEN};
use crate::error::Error;

/// An AEAD key: AES-256-GCM or ChaCha20-Poly1305 with 96-bit nonces.
#[pyclass(module = "tether._core", name = "Aead", frozen)]
pub(crate) struct PyAead {
    key: Key,
}

fn nonce12(nonce: &[u8]) -> Result<[u8; NONCE_LEN], Error> {
    nonce.try_into().map_err(|_| {
        Error::InvalidArgument(format!(
            "the nonce is {NONCE_LEN} bytes, got {}",
            nonce.len()
        ))
    })
}

#[pymethods]
impl PyAead {
    #[new]
    fn new(algorithm: &str, key: Buf<'_>) -> PyResult<Self> {
        Ok(Self {
            key: Key::new(Algorithm::parse(algorithm)?, key.as_bytes())?,
        })
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        match self.key.algorithm() {
            Algorithm::Aes256Gcm => "AES-256-GCM",
            Algorithm::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    /// Encrypt and authenticate: returns ciphertext followed by the 16-byte tag.
    #[pyo3(signature = (nonce, data, aad = None))]
    fn seal<'py>(
        &self,
        py: Python<'py>,
        nonce: Buf<'py>,
        data: Buf<'py>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let nonce = nonce12(nonce.as_bytes())?;
        let (pt, ad) = (data.as_bytes(), aad.as_ref().map_or(&[][..], Buf::as_bytes));
        PyBytes::new_with(py, pt.len() + TAG_LEN, |out| {
            maybe_detached(py, pt.len(), || self.key.seal_to(&nonce, ad, pt, out))?;
            Ok(())
        })
    }

    /// Verify and decrypt ciphertext-then-tag; raises DecryptError if it does not authenticate.
    #[pyo3(signature = (nonce, data, aad = None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        nonce: Buf<'py>,
        data: Buf<'py>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let nonce = nonce12(nonce.as_bytes())?;
        let (ct, ad) = (data.as_bytes(), aad.as_ref().map_or(&[][..], Buf::as_bytes));
        let len = ct.len().checked_sub(TAG_LEN).ok_or(Error::Decrypt)?;
        PyBytes::new_with(py, len, |out| {
            maybe_detached(py, ct.len(), || self.key.open_to(&nonce, ad, ct, out))?;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!("Aead({:?}, key=<hidden>)", self.algorithm())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAead>()?;
    m.add("AEAD_TAG_LEN", TAG_LEN)?;
    m.add("AEAD_NONCE_LEN", NONCE_LEN)?;
    Ok(())
}
