//! Bindings for `crate::records`: sealed records for brokers. A whole batch per call, with the
//! GIL released while sealing or opening (when the batch holds at least
//! `GIL_RELEASE_THRESHOLD` bytes); outcomes are typed classes, not tuples.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView, PyString, PyTuple};

use super::buffer::{Buf, FreshBytes};
use super::maybe_detached;
use crate::aead::Algorithm;
use crate::error::Error;
use crate::records::{
    self, Header, KeyId, RecordError, RecordOpener, RecordSealer, KEY_ID_LEN, MAX_RECORD,
};

fn key_id(b: &[u8]) -> Result<KeyId, Error> {
    b.try_into().map_err(|_| {
        Error::InvalidArgument(format!("a key id is {KEY_ID_LEN} bytes, got {}", b.len()))
    })
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Aes256Gcm => "AES-256-GCM",
        Algorithm::ChaCha20Poly1305 => "ChaCha20-Poly1305",
    }
}

/// A batch argument must be a sequence of records, not one record (bytes would iterate as ints).
fn batch<'py>(ob: &Bound<'py, PyAny>, what: &str) -> PyResult<Vec<Buf<'py>>> {
    if ob.is_instance_of::<PyBytes>()
        || ob.is_instance_of::<PyByteArray>()
        || ob.is_instance_of::<PyMemoryView>()
        || ob.is_instance_of::<PyString>()
    {
        return Err(PyTypeError::new_err(format!(
            "{what} is a sequence of records (bytes-like), not a single one: wrap it in a list"
        )));
    }
    ob.extract()
}

type PyHeaders<'py> = Vec<(String, Buf<'py>)>;

/// A producer's sealer: one stream, one data key, strictly increasing positions.
#[pyclass(module = "tether._core", name = "RecordSealer")]
pub(crate) struct PyRecordSealer {
    inner: RecordSealer,
}

#[pymethods]
impl PyRecordSealer {
    #[new]
    #[pyo3(signature = (stream, producer, key_id, key, algorithm = "AES-256-GCM", next_position = 0))]
    fn new(
        stream: &str,
        producer: &str,
        key_id: Buf<'_>,
        key: Buf<'_>,
        algorithm: &str,
        next_position: u64,
    ) -> PyResult<Self> {
        Ok(Self {
            inner: RecordSealer::new(
                Algorithm::parse(algorithm)?,
                key.as_bytes(),
                self::key_id(key_id.as_bytes())?,
                stream,
                producer,
                next_position,
            )?,
        })
    }

    /// The position the next record gets.
    #[getter]
    fn next_position(&self) -> u64 {
        self.inner.next_position()
    }

    #[getter]
    fn key_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.key_id())
    }

    #[getter]
    fn stream(&self) -> &str {
        self.inner.stream()
    }

    #[getter]
    fn producer(&self) -> &str {
        self.inner.producer()
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        algorithm_name(self.inner.algorithm())
    }

    /// Seal a batch at consecutive positions: one sealed record per body, in order.
    /// `headers`, if given, has one entry per body: None or a sequence of `(name, value)`.
    /// All or nothing: if one record is refused (InvalidArgumentError), none is sealed and no
    /// position is used.
    #[pyo3(signature = (bodies, headers = None))]
    fn seal_many<'py>(
        &mut self,
        py: Python<'py>,
        bodies: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let bodies = batch(bodies, "bodies")?;
        let headers: Option<Vec<Option<PyHeaders<'py>>>> = match headers {
            Some(h) => Some(h.extract()?),
            None => None,
        };
        if let Some(h) = &headers {
            if h.len() != bodies.len() {
                return Err(Error::InvalidArgument(format!(
                    "headers has {} entries for {} bodies; give one entry (or None) per body",
                    h.len(),
                    bodies.len()
                ))
                .into());
            }
        }
        let mut total = 0usize;
        let records: Vec<(Vec<Header<'_>>, &[u8])> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let hs: Vec<Header<'_>> = headers
                    .as_ref()
                    .and_then(|h| h[i].as_ref())
                    .map(|h| h.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect())
                    .unwrap_or_default();
                let body = body.as_bytes();
                total = hs
                    .iter()
                    .fold(total.saturating_add(body.len()), |t, (_, v)| {
                        t.saturating_add(v.len())
                    });
                (hs, body)
            })
            .collect();
        let inner = &mut self.inner;
        // Each record is sealed straight into the `bytes` object returned for it.
        let mut fresh = inner
            .batch_lens(&records)?
            .into_iter()
            .map(|n| FreshBytes::new(py, n))
            .collect::<PyResult<Vec<_>>>()?;
        let mut outs: Vec<&mut [u8]> = fresh.iter_mut().map(FreshBytes::storage).collect();
        maybe_detached(py, total, || inner.seal_batch_to(&records, &mut outs))?;
        PyList::new(py, fresh.into_iter().map(|b| b.into_bytes(py)))
    }

    fn __repr__(&self) -> String {
        format!(
            "RecordSealer(stream={:?}, producer={:?}, key_id={}, algorithm={:?}, \
             next_position={}, key=<hidden>)",
            self.inner.stream(),
            self.inner.producer(),
            records::key_id_hex(self.inner.key_id()),
            algorithm_name(self.inner.algorithm()),
            self.inner.next_position()
        )
    }
}

/// An opened record.
#[pyclass(module = "tether._core", name = "OpenedRecord", frozen, get_all)]
pub(crate) struct PyOpenedRecord {
    producer: Py<PyString>,
    key_id: Py<PyBytes>,
    position: u64,
    gap: u64,
    headers: Py<PyList>,
    body: Py<PyBytes>,
}

#[pymethods]
impl PyOpenedRecord {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "OpenedRecord(producer={:?}, position={}, gap={}, headers={}, body=<{} bytes>)",
            self.producer.bind(py).to_string(),
            self.position,
            self.gap,
            self.headers.bind(py).len(),
            self.body.bind(py).as_bytes().len()
        )
    }
}

/// A record that was refused, and why.
#[pyclass(module = "tether._core", name = "RecordRefused", frozen, get_all)]
pub(crate) struct PyRecordRefused {
    /// "malformed", "unknown-key", "forged" or "replayed".
    reason: String,
    /// What is wrong and what to do (never key material).
    message: String,
    /// The record's key id (to fetch the key, for "unknown-key"), where known.
    key_id: Option<Py<PyBytes>>,
    /// The record's position, when it authenticated ("replayed", and "malformed" envelopes).
    position: Option<u64>,
    /// For "replayed": the last position opened from the producer.
    last: Option<u64>,
}

#[pymethods]
impl PyRecordRefused {
    fn __repr__(&self) -> String {
        format!(
            "RecordRefused(reason={:?}, message={:?})",
            self.reason, self.message
        )
    }
}

/// The Python objects shared by consecutive records of one producer and key.
#[derive(Default)]
struct Cache {
    key_id: Option<(KeyId, Py<PyBytes>)>,
    producer: Option<(std::sync::Arc<str>, Py<PyString>)>,
}

impl Cache {
    fn key_id(&mut self, py: Python<'_>, id: &KeyId) -> Py<PyBytes> {
        match &self.key_id {
            Some((k, b)) if k == id => b.clone_ref(py),
            _ => {
                let b = PyBytes::new(py, id).unbind();
                self.key_id = Some((*id, b.clone_ref(py)));
                b
            }
        }
    }

    fn producer(&mut self, py: Python<'_>, p: &std::sync::Arc<str>) -> Py<PyString> {
        match &self.producer {
            Some((q, s)) if std::sync::Arc::ptr_eq(p, q) => s.clone_ref(py),
            _ => {
                let s = PyString::new(py, p).unbind();
                self.producer = Some((std::sync::Arc::clone(p), s.clone_ref(py)));
                s
            }
        }
    }
}

fn refused(py: Python<'_>, cache: &mut Cache, e: &RecordError) -> PyRecordRefused {
    PyRecordRefused {
        reason: e.reason().as_str().to_owned(),
        message: e.to_string(),
        key_id: e.key_id().map(|k| cache.key_id(py, k)),
        position: e.position(),
        last: e.last(),
    }
}

fn opened(
    py: Python<'_>,
    cache: &mut Cache,
    r: &records::Opened,
    buf: &[u8],
) -> PyResult<PyOpenedRecord> {
    let items = r
        .headers(buf)
        .map(|(n, v)| {
            PyTuple::new(
                py,
                [
                    PyString::new(py, n).into_any(),
                    PyBytes::new(py, v).into_any(),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    let headers = PyList::new(py, items)?;
    Ok(PyOpenedRecord {
        producer: cache.producer(py, &r.producer),
        key_id: cache.key_id(py, &r.key_id),
        position: r.position,
        gap: r.gap,
        headers: headers.unbind(),
        body: PyBytes::new(py, r.body(buf)).unbind(),
    })
}

/// A consumer's opener for one stream: keys by id (each bound to its producer) and, per
/// producer, the last position opened.
#[pyclass(module = "tether._core", name = "RecordOpener")]
pub(crate) struct PyRecordOpener {
    inner: RecordOpener,
    /// Where a batch is decrypted, reused from batch to batch (at most SCRATCH_KEEP kept).
    scratch: Vec<u8>,
}

/// The scratch space an opener keeps between batches; a larger batch's is freed after it.
const SCRATCH_KEEP: usize = 8 * 1024 * 1024;

#[pymethods]
impl PyRecordOpener {
    #[new]
    fn new(stream: &str) -> PyResult<Self> {
        Ok(Self {
            inner: RecordOpener::new(stream)?,
            scratch: Vec::new(),
        })
    }

    #[getter]
    fn stream(&self) -> &str {
        self.inner.stream()
    }

    /// Add (or replace) the key `key_id`, used by `producer` alone.
    #[pyo3(signature = (key_id, key, producer, algorithm = "AES-256-GCM"))]
    fn add_key(
        &mut self,
        key_id: Buf<'_>,
        key: Buf<'_>,
        producer: &str,
        algorithm: &str,
    ) -> PyResult<()> {
        let id = self::key_id(key_id.as_bytes())?;
        let alg = Algorithm::parse(algorithm)?;
        Ok(self.inner.add_key(id, alg, key.as_bytes(), producer)?)
    }

    /// Forget a key (absent: nothing happens). The producer's last position is kept.
    fn remove_key(&mut self, key_id: Buf<'_>) -> PyResult<()> {
        self.inner.remove_key(&self::key_id(key_id.as_bytes())?);
        Ok(())
    }

    fn has_key(&self, key_id: Buf<'_>) -> PyResult<bool> {
        Ok(self.inner.has_key(&self::key_id(key_id.as_bytes())?))
    }

    /// The last position opened from `producer`, or None.
    fn last_position(&self, producer: &str) -> Option<u64> {
        self.inner.last_position(producer)
    }

    /// Open a batch, in order: an OpenedRecord or a RecordRefused per record. A refused record
    /// changes nothing.
    fn open_many<'py>(
        &mut self,
        py: Python<'py>,
        records: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let bufs = batch(records, "records")?;
        let slices: Vec<&[u8]> = bufs.iter().map(Buf::as_bytes).collect();
        let total = slices.iter().fold(0usize, |t, s| t.saturating_add(s.len()));
        let (inner, scratch) = (&mut self.inner, &mut self.scratch);
        scratch.clear();
        // At most the records' own size (they are in memory already): no regrowth mid-batch.
        scratch.reserve(total);
        let results = maybe_detached(py, total, || inner.open_batch_into(&slices, scratch));
        let mut cache = Cache::default();
        let out = PyList::empty(py);
        for r in &results {
            match r {
                Ok(o) => out.append(Py::new(py, opened(py, &mut cache, o, scratch)?)?)?,
                Err(e) => out.append(Py::new(py, refused(py, &mut cache, e))?)?,
            }
        }
        if scratch.capacity() > SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!("RecordOpener(stream={:?})", self.inner.stream())
    }
}

/// The key id of a sealed record (to know which key to fetch), or None if it is malformed.
#[pyfunction]
fn record_key_id<'py>(py: Python<'py>, record: Buf<'py>) -> Option<Bound<'py, PyBytes>> {
    records::peek(record.as_bytes())
        .ok()
        .map(|h| PyBytes::new(py, &h.key_id))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRecordSealer>()?;
    m.add_class::<PyRecordOpener>()?;
    m.add_class::<PyOpenedRecord>()?;
    m.add_class::<PyRecordRefused>()?;
    m.add_function(wrap_pyfunction!(record_key_id, m)?)?;
    m.add("RECORD_VERSION", records::VERSION)?;
    m.add("RECORD_KEY_ID_LEN", KEY_ID_LEN)?;
    m.add("RECORD_OVERHEAD", records::OVERHEAD)?;
    m.add("RECORD_MAX_HEADERS", records::MAX_HEADERS)?;
    m.add("MAX_RECORD", MAX_RECORD)?;
    Ok(())
}
