//! The pyo3 bindings: argument conversion, buffers, and the one error mapping. No logic lives
//! here; every method forwards to the Python-free core in the crate root.

mod aead;
mod buffer;
mod engine;
mod errors;
mod events;
mod frame;
mod machines;
mod nats;
mod noise;
mod records;

use pyo3::prelude::*;

/// Payloads at least this large are processed with the GIL released (below it the release costs
/// more than it saves).
pub(crate) const GIL_RELEASE_THRESHOLD: usize = 2048;

/// Run `f` with the GIL released when `len` (the bytes it processes) is at least the threshold.
/// `f` touches no Python object (it only gets byte slices), so releasing is safe.
pub(crate) fn maybe_detached<T: Send>(
    py: Python<'_>,
    len: usize,
    f: impl FnOnce() -> T + Send,
) -> T {
    if len >= GIL_RELEASE_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn tether_core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    frame::register(m)?;
    aead::register(m)?;
    noise::register(m)?;
    engine::register(m)?;
    events::register(m)?;
    machines::register(m)?;
    records::register(m)?;
    nats::register(m)?;
    Ok(())
}
