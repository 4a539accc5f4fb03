//! Bindings for `crate::engine`: the data plane's handle, used by
//! `tether.node.rust_data_plane`.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;

use super::buffer::Buf;
use super::events::{event_to_py, SendStatus, SyncMode};
use super::noise::PyChannelCipher;
use crate::engine::{Engine, LinkOptions, SessionSpec};
use crate::error::Error;

/// Take the descriptor of a Python socket object: `sock.detach()` is called here, so the
/// object no longer owns it (its `fileno()` is -1 and closing it closes nothing) and the
/// engine alone closes it. This is the only way a descriptor crosses into the engine: any
/// object with a `detach()` returning the descriptor it owned (`socket.socket` does).
#[allow(unsafe_code)]
fn take_socket(sock: &Bound<'_, PyAny>) -> PyResult<OwnedFd> {
    let fd: RawFd = sock.call_method0("detach")?.extract()?;
    if fd < 0 {
        return Err(
            Error::InvalidArgument("the socket is closed (no descriptor to take)".into()).into(),
        );
    }
    // SAFETY: `detach()` hands over the descriptor the socket object owned and makes it forget
    // it, so nothing else in the process owns `fd` now: ownership moves here, and the
    // descriptor is closed exactly once, by the engine.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn duration(secs: f64, what: &str) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| Error::InvalidArgument(format!("{what} must be a positive number of seconds")))
}

fn parse_ip(host: &str) -> Result<IpAddr, Error> {
    host.trim_matches(['[', ']'])
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{host:?} is not an IP address")))
}

fn io(e: &std::io::Error) -> Error {
    Error::State(format!("the data plane could not take the socket: {e}"))
}

/// The engine's counters: how often it applied back-pressure, by kind, each counted when the
/// wait began (`crate::engine::Backpressure`).
#[pyclass(module = "tether._core", frozen, get_all)]
pub(crate) struct EngineStats {
    /// A session stopped reading its socket: no credit (its peer's window is used up).
    session_credit: u64,
    /// A session stopped reading its socket: its channel's link is over its high-water mark.
    session_congested: u64,
    /// A link's send queue went over its high-water mark.
    link_congested: u64,
    /// A link stopped being read: too many of its messages wait for Python.
    link_up_limit: u64,
}

/// The data plane of one node: an I/O thread owning its links and portal sessions.
#[pyclass(module = "tether._core", name = "Engine", frozen)]
pub(crate) struct PyEngine {
    inner: Engine,
}

#[pymethods]
impl PyEngine {
    /// Start the engine's thread; `notify` (a socket: the engine takes its descriptor, see
    /// `take_socket`) is written a byte whenever events are ready for `take_events`.
    #[new]
    fn new(notify: &Bound<'_, PyAny>) -> PyResult<Self> {
        let fd = take_socket(notify)?;
        Ok(Self {
            inner: Engine::start(fd).map_err(|e| io(&e))?,
        })
    }

    /// Take over a connected socket after its hello (its descriptor: see `take_socket`);
    /// `rest` is what followed the hello. Returns the link's id.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (sock, name, rest, max_frame_len, keepalive, dead_after, frame_timeout,
                        drain_timeout))]
    fn add_link(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        name: Vec<u8>,
        rest: Buf<'_>,
        max_frame_len: u32,
        keepalive: f64,
        dead_after: f64,
        frame_timeout: f64,
        drain_timeout: f64,
    ) -> PyResult<u64> {
        let fd = take_socket(sock)?;
        let opts = LinkOptions {
            max_frame_len,
            keepalive: duration(keepalive, "keepalive")?,
            dead_after: duration(dead_after, "dead_after")?,
            frame_timeout: duration(frame_timeout, "frame_timeout")?,
            drain_timeout: duration(drain_timeout, "drain_timeout")?,
        };
        let rest = rest.as_bytes().to_vec();
        let inner = &self.inner;
        Ok(py
            .detach(|| inner.add_link(fd, name, &rest, opts))
            .map_err(|e| io(&e))?)
    }

    /// Queue frames for a link.
    fn send(&self, py: Python<'_>, link: u64, data: Buf<'_>) -> SendStatus {
        let data = data.as_bytes().to_vec();
        let inner = &self.inner;
        py.detach(|| inner.send(link, data)).into()
    }

    /// Python has delivered `n` bytes of the link's events (its reading resumes below a limit).
    fn ack(&self, link: u64, n: usize) {
        self.inner.ack(link, n);
    }

    fn close_link(&self, py: Python<'_>, link: u64, reason: &str) {
        let inner = &self.inner;
        py.detach(|| inner.close_link(link, reason));
    }

    /// `(received frames, sent frames, queued bytes)`, or None for a closed link.
    fn link_stats(&self, link: u64) -> Option<(u64, u64, usize)> {
        self.inner.link_stats(link)
    }

    /// Decrypt the channel's DATA here: messages to `address` + `.in` are opened with
    /// `cipher` (shared with Python); sessions send with `frame_header` (an encoded routed
    /// message to the peer's decryptor up to its payload length) through `link`, or inside
    /// the channel `via` when that is its first hop.
    #[pyo3(signature = (address, cipher, frame_header, link, via))]
    fn add_channel(
        &self,
        address: Vec<u8>,
        cipher: PyRef<'_, PyChannelCipher>,
        frame_header: Vec<u8>,
        link: Option<u64>,
        via: Option<u64>,
    ) -> u64 {
        self.inner
            .add_channel(address, cipher.shared(), frame_header, link, via)
    }

    /// Forward messages to the local address `name` inside `channel`, to `route` + the rest of
    /// their onward route (`channel` None: stop).
    #[pyo3(signature = (name, channel, route))]
    fn set_forward(&self, name: Vec<u8>, channel: Option<u64>, route: Vec<(u16, Vec<u8>)>) {
        self.inner.set_forward(name, channel.map(|c| (c, route)));
    }

    /// Let `channel`'s messages go out on `link` (its replies to what was forwarded into it).
    fn grant(&self, link: u64, channel: u64) {
        self.inner.grant(link, channel);
    }

    /// Whether `channel`'s messages may go out on `link`.
    fn granted(&self, link: u64, channel: u64) -> bool {
        self.inner.granted(link, channel)
    }

    /// Whether `link` forwards for any channel.
    fn has_grants(&self, link: u64) -> bool {
        self.inner.has_grants(link)
    }

    /// For tests: the next event of link or session `id` panics, as a bug would (only that
    /// link or session fails).
    fn inject_fault(&self, id: u64) {
        self.inner.inject_fault(id);
    }

    /// `(messages, payload bytes)` the engine forwarded at `name`.
    fn forwarded(&self, name: &[u8]) -> (u64, u64) {
        self.inner.forwarded(name)
    }

    /// The engine's counters (back-pressure applied, by kind), for a node's metrics.
    fn stats(&self) -> EngineStats {
        let b = self.inner.stats().backpressure;
        EngineStats {
            session_credit: b.session_credit,
            session_congested: b.session_congested,
            link_congested: b.link_congested,
            link_up_limit: b.link_up_limit,
        }
    }

    fn remove_channel(&self, py: Python<'_>, channel: u64, reason: &str) {
        let inner = &self.inner;
        py.detach(|| inner.remove_channel(channel, reason));
    }

    fn channel_idle(&self, channel: u64) -> Option<f64> {
        self.inner.channel_idle(channel)
    }

    /// Register a portal session; returns its id.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (channel, sock, header, address, match_return, window, resume_timeout, open, sync,
                        connect_timeout, connect_prefix))]
    fn add_session(
        &self,
        py: Python<'_>,
        channel: u64,
        sock: Option<&Bound<'_, PyAny>>,
        header: Vec<u8>,
        address: Vec<u8>,
        match_return: Option<Vec<u8>>,
        window: u64,
        resume_timeout: f64,
        open: bool,
        sync: SyncMode,
        connect_timeout: f64,
        connect_prefix: String,
    ) -> PyResult<u64> {
        let sock = sock.map(take_socket).transpose()?;
        let spec = SessionSpec {
            channel,
            sock,
            header,
            address,
            match_return,
            window,
            open,
            sync: sync.into(),
            connect_timeout: duration(connect_timeout, "connect_timeout")?,
            resume_timeout: duration(resume_timeout, "resume_timeout")?,
            connect_prefix,
        };
        let inner = &self.inner;
        Ok(py
            .detach(|| inner.add_session(spec))
            .map_err(Error::State)?)
    }

    /// Connect a session registered without a socket to `host` (an IP address) and `port`.
    fn session_connect(&self, py: Python<'_>, session: u64, host: &str, port: u16) -> PyResult<()> {
        let ip = parse_ip(host)?;
        let inner = &self.inner;
        py.detach(|| inner.session_connect(session, SocketAddr::new(ip, port)));
        Ok(())
    }

    fn session_deliver(&self, py: Python<'_>, session: u64, payload: Buf<'_>) {
        let payload = payload.as_bytes().to_vec();
        let inner = &self.inner;
        py.detach(|| inner.session_deliver(session, &payload));
    }

    fn session_synced(&self, py: Python<'_>, session: u64) {
        let inner = &self.inner;
        py.detach(|| inner.session_synced(session));
    }

    fn close_session(&self, py: Python<'_>, session: u64, reason: &str, notify: bool) {
        let inner = &self.inner;
        py.detach(|| inner.close_session(session, reason, notify));
    }

    /// `(sent, received, held)` bytes of a live session, else None.
    fn session_stats(&self, session: u64) -> Option<(u64, u64, u64)> {
        self.inner.session_stats(session)
    }

    /// Take over an inlet's listening socket (its descriptor: see `take_socket`); its
    /// sessions' addresses are `prefix` + a number. Returns the inlet's id.
    fn add_inlet(
        &self,
        sock: &Bound<'_, PyAny>,
        prefix: Vec<u8>,
        window: u64,
        resume_timeout: f64,
        max_sessions: usize,
    ) -> PyResult<u64> {
        let resume = duration(resume_timeout, "resume_timeout")?;
        let fd = take_socket(sock)?;
        Ok(self
            .inner
            .add_inlet(fd, prefix, window, resume, max_sessions)
            .map_err(|e| io(&e))?)
    }

    /// Open the inlet's connections through `channel` to the encoded route `onward` beyond it
    /// (None: hand them to Python).
    #[pyo3(signature = (inlet, channel, onward))]
    fn bind_inlet(&self, inlet: u64, channel: Option<u64>, onward: Option<Vec<u8>>) {
        self.inner.bind_inlet(inlet, channel.zip(onward));
    }

    fn remove_inlet(&self, inlet: u64) {
        self.inner.remove_inlet(inlet);
    }

    /// Serve OPENs to `name` through authorized channels here; returns the outlet's id.
    fn add_outlet(
        &self,
        name: Vec<u8>,
        window: u64,
        resume_timeout: f64,
        max_sessions: usize,
        connect_timeout: f64,
        connect_prefix: String,
    ) -> PyResult<u64> {
        let timeout = duration(connect_timeout, "connect_timeout")?;
        let resume = duration(resume_timeout, "resume_timeout")?;
        Ok(self
            .inner
            .add_outlet(name, window, resume, max_sessions, timeout, connect_prefix))
    }

    /// The outlet's target, an IP address and port (None: Python resolves it per session).
    #[pyo3(signature = (outlet, host, port))]
    fn set_outlet_target(&self, outlet: u64, host: Option<&str>, port: u16) -> PyResult<()> {
        let target = match host {
            None => None,
            Some(h) => Some(SocketAddr::new(parse_ip(h)?, port)),
        };
        self.inner.set_outlet_target(outlet, target);
        Ok(())
    }

    fn allow_outlet(&self, outlet: u64, channel: u64, allowed: bool) {
        self.inner.allow_outlet(outlet, channel, allowed);
    }

    fn remove_outlet(&self, outlet: u64) {
        self.inner.remove_outlet(outlet);
    }

    /// The events ready now, in order, each as its class (`tether._core.LinkMessage`, ...).
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let inner = &self.inner;
        let events = py.detach(|| inner.take_events());
        let out = PyList::empty(py);
        for ev in events {
            out.append(event_to_py(py, ev)?)?;
        }
        Ok(out)
    }

    /// Stop the thread and close every socket it holds (idempotent).
    fn stop(&self, py: Python<'_>) {
        let inner = &self.inner;
        py.detach(|| inner.stop());
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<EngineStats>()?;
    Ok(())
}
