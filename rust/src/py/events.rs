//! The typed boundary of the data plane: one Python class per engine event, and the enums for
//! sync mode and send status. Python dispatches on the class (`match event: case Inner(...)`).

use std::os::fd::IntoRawFd;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::frame::{message_to_py, route_to_py};
use crate::engine::{self, Event};
use crate::route;

/// Whether a new session must wait for Python to deliver what it already holds.
#[pyclass(module = "tether._core", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SyncMode {
    /// Nothing earlier can be pending (a fresh address): go at once.
    #[pyo3(name = "SYNCED")]
    Synced,
    /// Python holds nothing earlier: wait only for what the engine still queues.
    #[pyo3(name = "IF_QUEUED")]
    IfQueued,
    /// Python holds earlier events: wait for the session's `Sync` event.
    #[pyo3(name = "ALWAYS")]
    Always,
}

impl From<SyncMode> for engine::SyncMode {
    fn from(m: SyncMode) -> Self {
        match m {
            SyncMode::Synced => engine::SyncMode::Synced,
            SyncMode::IfQueued => engine::SyncMode::IfQueued,
            SyncMode::Always => engine::SyncMode::Always,
        }
    }
}

/// The outcome of `Engine.send`.
#[pyclass(module = "tether._core", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SendStatus {
    /// Sent, or queued under the link's high-water mark.
    #[pyo3(name = "SENT")]
    Sent,
    /// Queued, and the link is congested: wait for its `Drained` event.
    #[pyo3(name = "CONGESTED")]
    Congested,
    /// The link is closed.
    #[pyo3(name = "CLOSED")]
    Closed,
}

impl From<engine::SendStatus> for SendStatus {
    fn from(s: engine::SendStatus) -> Self {
        match s {
            engine::SendStatus::Sent => SendStatus::Sent,
            engine::SendStatus::Congested => SendStatus::Congested,
            engine::SendStatus::Closed => SendStatus::Closed,
        }
    }
}

type Message = Py<PyTuple>;

/// A routed message from a link that the engine does not handle (Python routes it): `message`
/// is `(onward, return_route, payload)`; `charge` counts against the link until acknowledged.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct LinkMessage {
    link: u64,
    charge: usize,
    message: Message,
}

/// An inner message opened from channel `channel`, for the node to route.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct ChannelMessage {
    link: u64,
    charge: usize,
    channel: u64,
    message: Message,
}

/// A continuation fragment of a message whose start Python opened: Python joins it.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct Fragment {
    link: u64,
    charge: usize,
    channel: u64,
    plain: Py<PyBytes>,
    nonce: u64,
}

/// A link closed; `unsent` holds the whole frames that never left.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct LinkClosed {
    link: u64,
    reason: String,
    unsent: Py<PyList>,
}

/// A congested link is below its low-water mark again.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct Drained {
    link: u64,
}

/// A session ended (`reason` empty: an orderly end of both directions).
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct SessionClosed {
    session: u64,
    reason: String,
    sent: u64,
    received: u64,
}

/// Session `session` is open (inlet side: the outlet answered OPEN, its target connected;
/// outlet side: the target connected), `seconds` after it was registered.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct SessionOpened {
    session: u64,
    seconds: f64,
}

/// Every event before this one that could concern `session` was handed out: Python answers
/// `Engine.session_synced` once it delivered them.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct Sync {
    link: Option<u64>,
    session: u64,
}

/// Channel `channel` refused `count` messages (forged, replayed, malformed); the last reason.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct Refused {
    channel: u64,
    reason: String,
    count: u64,
}

/// Inlet `inlet` opened session `session` (address `address`) through channel `channel`.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct InletSession {
    inlet: u64,
    session: u64,
    channel: u64,
    address: Py<PyBytes>,
}

/// Inlet `inlet` accepted a connection it cannot open alone: the descriptor `fd` is Python's.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct InletAccepted {
    inlet: u64,
    fd: i32,
}

/// Outlet `outlet` opened session `session` for the inlet session at `return_route`.
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct OutletSession {
    outlet: u64,
    session: u64,
    channel: u64,
    return_route: Py<PyList>,
}

/// One engine event as its Python class.
#[allow(clippy::too_many_lines)] // one short arm per event class
pub(crate) fn event_to_py(py: Python<'_>, ev: Event) -> PyResult<Py<PyAny>> {
    Ok(match ev {
        Event::Message { link, frame } => {
            let message = message_to_py(py, &route::decode(&frame)?)?.unbind();
            let charge = engine::event_charge(frame.len());
            Py::new(
                py,
                LinkMessage {
                    link,
                    charge,
                    message,
                },
            )?
            .into_any()
        }
        Event::Inner {
            link,
            channel,
            message,
        } => {
            let charge = engine::event_charge(message.len());
            let message = message_to_py(py, &route::decode(&message)?)?.unbind();
            Py::new(
                py,
                ChannelMessage {
                    link,
                    charge,
                    channel,
                    message,
                },
            )?
            .into_any()
        }
        Event::Plain {
            link,
            channel,
            plain,
            nonce,
        } => {
            let charge = engine::event_charge(plain.len());
            let plain = PyBytes::new(py, &plain).unbind();
            Py::new(
                py,
                Fragment {
                    link,
                    charge,
                    channel,
                    plain,
                    nonce,
                },
            )?
            .into_any()
        }
        Event::LinkClosed {
            link,
            reason,
            unsent,
        } => {
            let unsent = PyList::new(py, unsent.iter().map(|f| PyBytes::new(py, f)))?.unbind();
            Py::new(
                py,
                LinkClosed {
                    link,
                    reason,
                    unsent,
                },
            )?
            .into_any()
        }
        Event::Drained { link } => Py::new(py, Drained { link })?.into_any(),
        Event::SessionClosed {
            session,
            reason,
            sent,
            received,
        } => Py::new(
            py,
            SessionClosed {
                session,
                reason,
                sent,
                received,
            },
        )?
        .into_any(),
        Event::SessionOpened { session, seconds } => {
            Py::new(py, SessionOpened { session, seconds })?.into_any()
        }
        Event::Sync { link, session } => Py::new(py, Sync { link, session })?.into_any(),
        Event::Refused {
            channel,
            count,
            reason,
        } => Py::new(
            py,
            Refused {
                channel,
                reason,
                count,
            },
        )?
        .into_any(),
        Event::InletSession {
            inlet,
            session,
            channel,
            address,
        } => {
            let address = PyBytes::new(py, &address).unbind();
            Py::new(
                py,
                InletSession {
                    inlet,
                    session,
                    channel,
                    address,
                },
            )?
            .into_any()
        }
        Event::InletAccepted { inlet, fd } => Py::new(
            py,
            InletAccepted {
                inlet,
                fd: fd.into_raw_fd(),
            },
        )?
        .into_any(),
        Event::OutletSession {
            outlet,
            session,
            channel,
            return_route,
        } => {
            let mut m = vec![route::VERSION, 0];
            m.extend_from_slice(&return_route);
            m.extend_from_slice(&[0, 0, 0, 0]);
            let return_route = route_to_py(py, &route::decode(&m)?.return_route)?.unbind();
            Py::new(
                py,
                OutletSession {
                    outlet,
                    session,
                    channel,
                    return_route,
                },
            )?
            .into_any()
        }
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SyncMode>()?;
    m.add_class::<SendStatus>()?;
    m.add_class::<LinkMessage>()?;
    m.add_class::<ChannelMessage>()?;
    m.add_class::<Fragment>()?;
    m.add_class::<LinkClosed>()?;
    m.add_class::<Drained>()?;
    m.add_class::<SessionClosed>()?;
    m.add_class::<SessionOpened>()?;
    m.add_class::<Sync>()?;
    m.add_class::<Refused>()?;
    m.add_class::<InletSession>()?;
    m.add_class::<InletAccepted>()?;
    m.add_class::<OutletSession>()?;
    Ok(())
}
