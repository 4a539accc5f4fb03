//! Bindings for `crate::noise` and `crate::channel`.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::buffer::Buf;
use super::errors::instance;
use super::maybe_detached;
use crate::channel::{self, ChannelCipher};
use crate::engine::SharedCipher;
use crate::error::Error;
use crate::noise::{self, Handshake, TransportState};

fn consumed() -> Error {
    Error::State("this handshake was turned into a transport already; use the transport".into())
}

/// A Noise XX handshake in progress.
#[pyclass(module = "tether._core", name = "Handshake")]
pub(crate) struct PyHandshake {
    inner: Option<Handshake>,
    protocol_name: String,
    initiator: bool,
}

impl PyHandshake {
    fn hs(&self) -> Result<&Handshake, Error> {
        self.inner.as_ref().ok_or_else(consumed)
    }
    fn hs_mut(&mut self) -> Result<&mut Handshake, Error> {
        self.inner.as_mut().ok_or_else(consumed)
    }
    fn take_split(&mut self) -> Result<noise::handshakestate::Split, Error> {
        let hs = self.hs()?;
        if hs.is_broken() {
            return Err(Error::Broken);
        }
        if !hs.is_finished() {
            return Err(Error::State("the handshake is not finished yet".into()));
        }
        self.inner.take().ok_or_else(consumed)?.split()
    }
}

#[pymethods]
impl PyHandshake {
    #[new]
    #[pyo3(signature = (protocol_name, initiator, static_key, prologue = None, ephemeral_key = None))]
    fn new(
        protocol_name: &str,
        initiator: bool,
        static_key: Buf<'_>,
        prologue: Option<Buf<'_>>,
        ephemeral_key: Option<Buf<'_>>,
    ) -> PyResult<Self> {
        let hs = Handshake::new(
            protocol_name,
            initiator,
            static_key.as_bytes(),
            prologue.as_ref().map_or(&[][..], Buf::as_bytes),
            ephemeral_key.as_ref().map(Buf::as_bytes),
        )?;
        Ok(Self {
            inner: Some(hs),
            protocol_name: protocol_name.to_owned(),
            initiator,
        })
    }

    /// Write the next handshake message, carrying `payload`.
    #[pyo3(signature = (payload = None))]
    fn write_message<'py>(
        &mut self,
        py: Python<'py>,
        payload: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let msg = self
            .hs_mut()?
            .write_message(payload.as_ref().map_or(&[][..], Buf::as_bytes))?;
        Ok(PyBytes::new(py, &msg))
    }

    /// Read the peer's next handshake message; returns its payload.
    fn read_message<'py>(
        &mut self,
        py: Python<'py>,
        message: Buf<'py>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let payload = self.hs_mut()?.read_message(message.as_bytes())?;
        Ok(PyBytes::new(py, &payload))
    }

    #[getter]
    fn finished(&self) -> PyResult<bool> {
        Ok(self.hs()?.is_finished())
    }

    /// True once a refused message ended this handshake (every later call raises BrokenError).
    #[getter]
    fn broken(&self) -> PyResult<bool> {
        Ok(self.hs()?.is_broken())
    }

    #[getter]
    fn my_turn(&self) -> PyResult<bool> {
        Ok(self.hs()?.is_my_turn())
    }

    #[getter]
    fn initiator(&self) -> bool {
        self.initiator
    }

    #[getter]
    fn protocol_name(&self) -> &str {
        &self.protocol_name
    }

    #[getter]
    fn handshake_hash<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, self.hs()?.handshake_hash()))
    }

    #[getter]
    fn remote_static<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self.hs()?.remote_static().map(|s| PyBytes::new(py, s)))
    }

    /// The most payload bytes the next handshake message can carry.
    #[getter]
    fn max_payload_len(&self) -> PyResult<usize> {
        Ok(self.hs()?.max_payload_len())
    }

    /// Finish: the standard Noise transport (implicit nonces, in-order delivery).
    #[allow(clippy::wrong_self_convention)] // Python API: the handshake object is consumed (emptied)
    fn into_transport(&mut self) -> PyResult<PyTransport> {
        let split = self.take_split()?;
        Ok(PyTransport {
            inner: TransportState::from_split(&split)?,
            protocol_name: self.protocol_name.clone(),
        })
    }

    /// Finish: the explicit-nonce channel cipher (reordering, anti-replay, rekey by count).
    #[pyo3(signature = (rekey_interval = channel::DEFAULT_REKEY_INTERVAL))]
    #[allow(clippy::wrong_self_convention)] // as into_transport
    fn into_channel_cipher(&mut self, rekey_interval: u64) -> PyResult<PyChannelCipher> {
        let split = self.take_split()?;
        Ok(PyChannelCipher {
            inner: Arc::new(Mutex::new(ChannelCipher::from_split(
                &split,
                rekey_interval,
            )?)),
            handshake_hash: split.handshake_hash.clone(),
            remote_static: split.remote_static,
            protocol_name: self.protocol_name.clone(),
            initiator: split.initiator,
        })
    }

    fn __repr__(&self) -> String {
        let state = match &self.inner {
            None => "consumed".to_string(),
            Some(h) if h.is_broken() => "broken".to_string(),
            Some(h) if h.is_finished() => "finished".to_string(),
            Some(h) if h.is_my_turn() => "writing".to_string(),
            Some(_) => "reading".to_string(),
        };
        format!(
            "Handshake({:?}, initiator={}, state={state})",
            self.protocol_name,
            if self.initiator { "True" } else { "False" }
        )
    }
}

/// The standard Noise transport: implicit nonces, one message (<= 65535 bytes) per call.
#[pyclass(module = "tether._core", name = "Transport")]
pub(crate) struct PyTransport {
    inner: TransportState,
    protocol_name: String,
}

#[pymethods]
impl PyTransport {
    fn encrypt<'py>(
        &mut self,
        py: Python<'py>,
        plaintext: Buf<'py>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let pt = plaintext.as_bytes();
        if pt.len() > noise::MAX_PAYLOAD_LEN {
            return Err(self.inner.encrypt(pt).err().unwrap_or(Error::Broken).into());
        }
        let inner = &mut self.inner;
        PyBytes::new_with(py, pt.len() + crate::aead::TAG_LEN, |out| {
            maybe_detached(py, pt.len(), || inner.encrypt_to(pt, out))?;
            Ok(())
        })
    }

    fn decrypt<'py>(
        &mut self,
        py: Python<'py>,
        ciphertext: Buf<'py>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ct = ciphertext.as_bytes();
        if ct.len() < crate::aead::TAG_LEN || ct.len() > noise::MAX_MESSAGE_LEN {
            return Err(Error::Decrypt.into());
        }
        let inner = &mut self.inner;
        PyBytes::new_with(py, ct.len() - crate::aead::TAG_LEN, |out| {
            maybe_detached(py, ct.len(), || inner.decrypt_to(ct, out))?;
            Ok(())
        })
    }

    /// Noise REKEY of the sending key (the peer must call rekey_incoming at the same point).
    fn rekey_outgoing(&mut self) {
        self.inner.rekey_outgoing();
    }

    /// Noise REKEY of the receiving key.
    fn rekey_incoming(&mut self) {
        self.inner.rekey_incoming();
    }

    #[getter]
    fn sending_nonce(&self) -> u64 {
        self.inner.sending_nonce()
    }

    #[getter]
    fn receiving_nonce(&self) -> u64 {
        self.inner.receiving_nonce()
    }

    /// Move the sending nonce forward (never back, so no nonce is reused).
    fn skip_sending_nonce_to(&mut self, nonce: u64) -> PyResult<()> {
        if nonce < self.inner.sending_nonce() {
            return Err(Error::InvalidArgument("the sending nonce never moves back".into()).into());
        }
        self.inner.set_sending_nonce(nonce);
        Ok(())
    }

    /// Move the receiving nonce forward, to follow a peer that skipped.
    fn skip_receiving_nonce_to(&mut self, nonce: u64) -> PyResult<()> {
        if nonce < self.inner.receiving_nonce() {
            return Err(
                Error::InvalidArgument("the receiving nonce never moves back".into()).into(),
            );
        }
        self.inner.set_receiving_nonce(nonce);
        Ok(())
    }

    #[getter]
    fn handshake_hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.handshake_hash())
    }

    #[getter]
    fn remote_static<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.remote_static())
    }

    #[getter]
    fn initiator(&self) -> bool {
        self.inner.is_initiator()
    }

    #[getter]
    fn protocol_name(&self) -> &str {
        &self.protocol_name
    }

    fn __repr__(&self) -> String {
        format!(
            "Transport({:?}, initiator={}, sending_nonce={}, receiving_nonce={})",
            self.protocol_name,
            if self.inner.is_initiator() {
                "True"
            } else {
                "False"
            },
            self.inner.sending_nonce(),
            self.inner.receiving_nonce()
        )
    }
}

/// Explicit-nonce transport for secure channels: out-of-order delivery, anti-replay window,
/// rekey every `rekey_interval` messages.
#[pyclass(module = "tether._core", name = "ChannelCipher")]
pub(crate) struct PyChannelCipher {
    /// Shared with the data plane (`crate::engine`), which seals and opens bulk data with it.
    /// Its methods keep the GIL while they hold the lock (a thread waiting for the lock never
    /// holds the GIL that the holder needs); the engine's thread never takes the GIL.
    inner: SharedCipher,
    handshake_hash: Vec<u8>,
    remote_static: [u8; 32],
    protocol_name: String,
    initiator: bool,
}

fn seal_one<'py>(
    py: Python<'py>,
    c: &mut ChannelCipher,
    ad: &[u8],
    pt: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    // Before the output is allocated: an oversized payload costs no buffer of its size.
    channel::check_payload_len(pt.len())?;
    PyBytes::new_with(py, ChannelCipher::sealed_len(pt.len()), |out| {
        c.seal_to_ad(ad, pt, out)?;
        Ok(())
    })
}

fn open_one<'py>(
    py: Python<'py>,
    c: &mut ChannelCipher,
    ad: &[u8],
    msg: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let len = ChannelCipher::opened_len(msg)?;
    PyBytes::new_with(py, len, |out| {
        c.open_to_ad(ad, msg, out)?;
        Ok(())
    })
}

fn check_chunk_size(chunk_size: usize) -> Result<(), Error> {
    if chunk_size == 0 || chunk_size > noise::MAX_PAYLOAD_LEN {
        return Err(Error::InvalidArgument(format!(
            "chunk_size must be 1..={}, got {chunk_size}",
            noise::MAX_PAYLOAD_LEN
        )));
    }
    Ok(())
}

fn seal_frames<'py>(
    py: Python<'py>,
    c: &mut ChannelCipher,
    slices: &[&[u8]],
) -> PyResult<Bound<'py, PyBytes>> {
    let total = ChannelCipher::sealed_frames_len(slices.iter().copied());
    PyBytes::new_with(py, total, |out| {
        c.seal_frames_to(slices, out)?;
        Ok(())
    })
}

impl PyChannelCipher {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelCipher> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn shared(&self) -> SharedCipher {
        Arc::clone(&self.inner)
    }
}

#[pymethods]
impl PyChannelCipher {
    /// Seal one payload (<= CHANNEL_MAX_PAYLOAD_LEN bytes) into a message carrying its nonce. `aad`, if given,
    /// is authenticated but not sent: `open` must be given the same bytes.
    #[pyo3(signature = (payload, aad = None))]
    fn seal<'py>(
        &mut self,
        py: Python<'py>,
        payload: Buf<'py>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        seal_one(
            py,
            &mut self.lock(),
            aad.as_ref().map_or(&[][..], Buf::as_bytes),
            payload.as_bytes(),
        )
    }

    /// Seal the concatenation of `parts` as one message and return it as a ready-to-send frame
    /// of the TCP transport carrying a routed message:
    /// `frame_len:u32 | header | payload_len:u32 | prefix | nonce | ciphertext | tag`, where
    /// `header` is an encoded routed message up to (not including) its payload length. The
    /// plaintext is copied once, into the frame, and sealed there.
    #[pyo3(signature = (header, prefix, parts, aad = None))]
    fn seal_routed_frame<'py>(
        &mut self,
        py: Python<'py>,
        header: Buf<'py>,
        prefix: Buf<'py>,
        parts: Vec<Buf<'py>>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ad = aad.as_ref().map_or(&[][..], Buf::as_bytes);
        let header = header.as_bytes();
        let prefix = prefix.as_bytes();
        let parts: Vec<&[u8]> = parts.iter().map(Buf::as_bytes).collect();
        let plain: usize = parts.iter().map(|p| p.len()).sum();
        channel::check_payload_len(plain)?;
        // The routed message's payload_len is a u32 like a frame's length: the same encoder.
        let payload_len = prefix.len() + ChannelCipher::sealed_len(plain);
        let frame_len = header.len() + 4 + payload_len;
        let (frame_hdr, payload_hdr) = (
            crate::frame::header(frame_len)?,
            crate::frame::header(payload_len)?,
        );
        let mut guard = self.lock();
        let c = &mut *guard;
        PyBytes::new_with(py, crate::frame::encoded_len(frame_len), |out| {
            out[..4].copy_from_slice(&frame_hdr);
            let mut pos = 4;
            out[pos..pos + header.len()].copy_from_slice(header);
            pos += header.len();
            out[pos..pos + 4].copy_from_slice(&payload_hdr);
            pos += 4;
            out[pos..pos + prefix.len()].copy_from_slice(prefix);
            pos += prefix.len();
            let sealed = &mut out[pos..];
            c.seal_parts_to_ad(ad, &parts, sealed)?;
            Ok(())
        })
    }

    /// Open one message; raises DecryptError or ReplayError and changes nothing if it is refused.
    #[pyo3(signature = (message, aad = None))]
    fn open<'py>(
        &mut self,
        py: Python<'py>,
        message: Buf<'py>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        open_one(
            py,
            &mut self.lock(),
            aad.as_ref().map_or(&[][..], Buf::as_bytes),
            message.as_bytes(),
        )
    }

    /// Seal many payloads in one call. Stops at the first error, which is raised; the payloads
    /// before it were sealed and their nonces used, so on error nothing from this call is sent.
    #[pyo3(signature = (payloads, aad = None))]
    fn seal_many<'py>(
        &mut self,
        py: Python<'py>,
        payloads: Vec<Buf<'py>>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ad = aad.as_ref().map_or(&[][..], Buf::as_bytes);
        let out = PyList::empty(py);
        // One guard for all: their nonces are consecutive (the fragments of one message).
        let mut c = self.lock();
        for p in &payloads {
            out.append(seal_one(py, &mut c, ad, p.as_bytes())?)?;
        }
        Ok(out)
    }

    /// Seal `data` of any length as consecutive messages of at most `chunk_size` payload bytes.
    #[pyo3(signature = (data, chunk_size = noise::MAX_PAYLOAD_LEN))]
    fn seal_chunks<'py>(
        &mut self,
        py: Python<'py>,
        data: Buf<'py>,
        chunk_size: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        check_chunk_size(chunk_size)?;
        let out = PyList::empty(py);
        let mut c = self.lock();
        for chunk in data.as_bytes().chunks(chunk_size) {
            out.append(seal_one(py, &mut c, &[], chunk)?)?;
        }
        Ok(out)
    }

    /// Seal many payloads into one stream of length-prefixed frames, ready to write to a socket,
    /// in one call with the GIL released once. All or nothing: on error no nonce is used.
    fn seal_frames<'py>(
        &mut self,
        py: Python<'py>,
        payloads: Vec<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let slices: Vec<&[u8]> = payloads.iter().map(Buf::as_bytes).collect();
        seal_frames(py, &mut self.lock(), &slices)
    }

    /// Split `data` into chunks of at most `chunk_size` bytes and seal them as one stream of
    /// length-prefixed frames (see `seal_frames`).
    #[pyo3(signature = (data, chunk_size = noise::MAX_PAYLOAD_LEN))]
    fn seal_stream<'py>(
        &mut self,
        py: Python<'py>,
        data: Buf<'py>,
        chunk_size: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        check_chunk_size(chunk_size)?;
        let slices: Vec<&[u8]> = data.as_bytes().chunks(chunk_size).collect();
        seal_frames(py, &mut self.lock(), &slices)
    }

    /// Open many messages in one call. Each entry of the result is the payload, or the exception
    /// (DecryptError, ReplayError) for a refused message — refused messages change nothing, so
    /// the others are unaffected.
    #[pyo3(signature = (messages, aad = None))]
    fn open_many<'py>(
        &mut self,
        py: Python<'py>,
        messages: Vec<Buf<'py>>,
        aad: Option<Buf<'py>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ad = aad.as_ref().map_or(&[][..], Buf::as_bytes);
        let out = PyList::empty(py);
        let mut guard = self.lock();
        for m in &messages {
            let m = m.as_bytes();
            match ChannelCipher::opened_len(m) {
                Err(e) => out.append(instance(py, e))?,
                Ok(len) => {
                    let mut failure = None;
                    let r = PyBytes::new_with(py, len, |buf| {
                        let inner = &mut *guard;
                        if let Err(e) = inner.open_to_ad(ad, m, buf) {
                            failure = Some(e);
                        }
                        Ok(())
                    })?;
                    match failure {
                        Some(e) => out.append(instance(py, e))?,
                        None => out.append(r)?,
                    }
                }
            }
        }
        Ok(out)
    }

    /// Drop the keys now (the channel closed); every later call raises BrokenError.
    fn erase(&mut self) {
        self.lock().erase();
    }

    #[getter]
    fn erased(&self) -> bool {
        self.lock().is_erased()
    }

    #[getter]
    fn sending_nonce(&self) -> u64 {
        self.lock().sending_nonce()
    }

    /// Move the sending nonce forward (never back).
    fn skip_sending_nonce_to(&mut self, nonce: u64) -> PyResult<()> {
        Ok(self.lock().skip_sending_nonce_to(nonce)?)
    }

    #[getter]
    fn highest_received(&self) -> Option<u64> {
        self.lock().highest_received()
    }

    #[getter]
    fn sending_epoch(&self) -> u64 {
        self.lock().sending_epoch()
    }

    #[getter]
    fn receiving_epoch(&self) -> u64 {
        self.lock().receiving_epoch()
    }

    #[getter]
    fn rekey_interval(&self) -> u64 {
        self.lock().rekey_interval()
    }

    #[getter]
    fn handshake_hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.handshake_hash)
    }

    #[getter]
    fn remote_static<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.remote_static)
    }

    #[getter]
    fn initiator(&self) -> bool {
        self.initiator
    }

    #[getter]
    fn protocol_name(&self) -> &str {
        &self.protocol_name
    }

    fn __repr__(&self) -> String {
        // One guard for both reads: the mutex is not reentrant.
        let (sending, highest) = {
            let c = self.lock();
            (c.sending_nonce(), c.highest_received())
        };
        format!(
            "ChannelCipher({:?}, initiator={}, sending_nonce={sending}, highest_received={highest:?})",
            self.protocol_name,
            if self.initiator { "True" } else { "False" },
        )
    }
}

/// A fresh X25519 key pair `(private, public)`.
#[pyfunction]
fn generate_keypair(py: Python<'_>) -> PyResult<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)> {
    let (private, public) = noise::generate_keypair()?;
    Ok((PyBytes::new(py, &private[..]), PyBytes::new(py, &public)))
}

/// The X25519 public key of a private key.
#[pyfunction]
fn public_key<'py>(py: Python<'py>, private_key: Buf<'py>) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &noise::public_key(private_key.as_bytes())?,
    ))
}

/// X25519 (RFC 7748): the shared secret of a private key and a peer's public key.
#[pyfunction]
fn x25519<'py>(
    py: Python<'py>,
    private_key: Buf<'py>,
    public_key: Buf<'py>,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &noise::x25519(private_key.as_bytes(), public_key.as_bytes())?,
    ))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHandshake>()?;
    m.add_class::<PyTransport>()?;
    m.add_class::<PyChannelCipher>()?;
    m.add_function(wrap_pyfunction!(generate_keypair, m)?)?;
    m.add_function(wrap_pyfunction!(public_key, m)?)?;
    m.add_function(wrap_pyfunction!(x25519, m)?)?;
    m.add("MAX_MESSAGE_LEN", noise::MAX_MESSAGE_LEN)?;
    m.add("MAX_PAYLOAD_LEN", noise::MAX_PAYLOAD_LEN)?;
    m.add("CHANNEL_MAX_PAYLOAD_LEN", crate::channel::MAX_PAYLOAD_LEN)?;
    m.add("CHANNEL_OVERHEAD", channel::OVERHEAD)?;
    m.add("DEFAULT_REKEY_INTERVAL", channel::DEFAULT_REKEY_INTERVAL)?;
    m.add("REPLAY_WINDOW", crate::replay::WINDOW)?;
    m.add(
        "PROTOCOL_NAMES",
        noise::Suite::ALL
            .iter()
            .map(|s| s.protocol_name())
            .collect::<Vec<_>>(),
    )?;
    Ok(())
}
