//! The Rust driver of the data plane: one I/O thread per node that owns the node's TCP links
//! (after their hello) and its established portal sessions, so that the bytes of an established
//! session never enter Python. The rules it drives are the sans-IO state machines both drivers
//! share ([`crate::portal::Session`], [`crate::reassembly`], [`crate::link`]); this module only
//! moves bytes between them and the sockets. Its Python face is
//! `tether.node.rust_data_plane.RustDataPlane`.
//!
//! What it does on its own, per readiness event and without the GIL:
//!
//! * reads a link's frames; a message for a registered secure-channel decryptor (a `DATA`
//!   step) is opened here (replay window and rekey are the shared [`ChannelCipher`]'s) and
//!   reassembled; an inner message for a registered portal session is handled here;
//! * runs each portal session: socket → `DATA` sealed straight into a routed frame on the
//!   channel's link (within its flow-control credit), `DATA` → socket, `CREDIT`, `EOF`
//!   (half-close), `CLOSE` and resets, by [`crate::portal::Session`]'s actions (the Python
//!   driver, `tether.services.session.Session`, runs the same state machine);
//! * keepalives, the dead-peer and slow-frame timeouts of each link.
//!
//! Everything else goes up to Python as an [`Event`], in arrival order per link, and the link
//! stops being read while [`UP_LIMIT`] bytes of its messages wait there (back-pressure, as the
//! Python reader had). Python writes to a link through [`Engine::send`], which writes straight
//! to the socket when nothing is queued. A session is always registered by Python (which keeps
//! every decision: routes, policies, refusals) and ended by either side.
//!
//! Bad input gets what the Python path gave it: a malformed frame or message closes that link
//! with the reason; a forged, replayed or truncated channel message is dropped and reported; a
//! protocol error in a session resets that session and tells its peer. Every length is checked
//! before allocation (frames by the decoder's limit, sessions by the flow-control window).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Poll, Registry, Token, Waker};

use crate::channel::ChannelCipher;
use crate::frame::FrameDecoder;
use crate::link::LinkTimers;
pub use crate::portal::MAX_DATA;
use crate::portal::{Action, Session as Flow};
use crate::reassembly::Reassembler;
use crate::route;

mod api;
mod channels;
mod links;
mod ports;
mod sessions;
mod state;

/// A channel's cipher, shared by Python (handshake-adjacent messages, credentials, close) and
/// the engine (bulk data).
pub type SharedCipher = Arc<Mutex<ChannelCipher>>;

const WAKER: Token = Token(0);
const LOCAL: u16 = 0;
const STEP_DATA: u8 = 4;
const READ_SIZE: usize = 256 * 1024;
/// A link is not read while this many bytes of its messages wait for Python (each message
/// counted at least [`MIN_EVENT_CHARGE`]).
pub const UP_LIMIT: usize = 4 << 20;
/// No link is read while this many bytes of all links' messages wait for Python: many links
/// cannot together make Python hold more than this.
pub const UP_TOTAL_LIMIT: usize = 64 << 20;
/// What a message waiting for Python counts at least: a small message costs Python far more
/// than its bytes (a tuple, its objects), so a flood of tiny frames meets the limits as soon
/// as a flood of large ones.
pub const MIN_EVENT_CHARGE: usize = 1024;

/// What a message of `len` bytes counts against the limits while it waits for Python.
pub fn event_charge(len: usize) -> usize {
    len.max(MIN_EVENT_CHARGE)
}
/// Above this many queued bytes a link is congested: sessions stop reading their sockets and
/// Python's sends are told to wait.
pub const HIGH_WATER: usize = 4 << 20;
const LOW_WATER: usize = 1 << 20;
/// Timers (keepalives, dead peers, slow frames, connect timeouts) and bookkeeping events are
/// looked at this often.
const TICK: Duration = Duration::from_millis(20);
/// Channels inside channels are opened (and sealed) here down to this depth; deeper ones go to
/// Python (a peer cannot make the engine recurse without bound).
const MAX_NESTING: usize = 4;
/// What a forwarded frame may grow by (routes, an outer channel's overhead) and still fit the
/// next link's frame limit; a larger one goes through Python, which fragments.
const FORWARD_MARGIN: usize = 4096;

/// A route as `(transport, address)` pairs.
pub type OwnedRoute = Vec<(u16, Vec<u8>)>;

/// A session's key: its channel, its address, and (outlet side) the peer's return route.
type Key = (u64, Vec<u8>, Option<Vec<u8>>);

fn token(id: u64) -> Token {
    Token(usize::try_from(id).unwrap_or(usize::MAX))
}

/// `Connection refused (os error 111)` → `connection refused`, as Python's `strerror.lower()`.
fn why(e: &io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_lowercase();
    if s.is_empty() {
        format!("{:?}", e.kind()).to_lowercase()
    } else {
        s
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the engine hands to Python, in order.
#[derive(Debug)]
pub enum Event {
    /// A routed message from a link that the engine does not handle (Python routes it).
    Message { link: u64, frame: Vec<u8> },
    /// A message decrypted from a registered channel, for Python to route (`message` is the
    /// encoded inner message; Python pushes the channel's address onto its return route).
    Inner {
        link: u64,
        channel: u64,
        message: Vec<u8>,
    },
    /// A link closed; `unsent` holds the whole frames that never left.
    LinkClosed {
        link: u64,
        reason: String,
        unsent: Vec<Vec<u8>>,
    },
    /// A congested link is below its low-water mark again.
    Drained { link: u64 },
    /// A session ended: `reason` is empty for an orderly end of both directions.
    SessionClosed {
        session: u64,
        reason: String,
        sent: u64,
        received: u64,
    },
    /// Every event before this one that could concern `session` has been handed out: Python
    /// answers with [`Engine::session_synced`] once it has delivered them.
    Sync { link: Option<u64>, session: u64 },
    /// A continuation fragment of a message whose start Python decrypted (the channel was
    /// registered while the message arrived): `plain` (flag byte first) is Python's to join.
    Plain {
        link: u64,
        channel: u64,
        plain: Vec<u8>,
        nonce: u64,
    },
    /// An inlet accepted a connection and made it a session (its binding was current).
    InletSession {
        inlet: u64,
        session: u64,
        channel: u64,
        address: Vec<u8>,
    },
    /// An inlet accepted a connection it cannot open by itself (no current binding): the
    /// socket is Python's now.
    InletAccepted { inlet: u64, fd: OwnedFd },
    /// A session is open: on the inlet side the outlet answered OPEN (its target connected),
    /// on the outlet side the target connected; `seconds` since the session was registered
    /// (for the portals' open-latency histograms, `docs/metrics.md`).
    SessionOpened { session: u64, seconds: f64 },
    /// An outlet opened a session for an authorized channel; `return_route` is the inlet
    /// session's (encoded, as inside a routed message).
    OutletSession {
        outlet: u64,
        session: u64,
        channel: u64,
        return_route: Vec<u8>,
    },
    /// A channel message was refused (forged, replayed, malformed).
    /// (At most one per channel per tick: a flood of forgeries costs Python nothing.)
    Refused {
        channel: u64,
        count: u64,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct LinkOptions {
    pub max_frame_len: u32,
    pub keepalive: Duration,
    pub dead_after: Duration,
    pub frame_timeout: Duration,
    /// A peer that takes none of the bytes queued for it for this long is closed.
    pub drain_timeout: Duration,
}

impl LinkOptions {
    fn timeouts(&self) -> crate::link::Timeouts {
        crate::link::Timeouts {
            keepalive: self.keepalive,
            dead_after: self.dead_after,
            frame_timeout: self.frame_timeout,
            drain_timeout: self.drain_timeout,
        }
    }
}

struct Link {
    sock: TcpStream,
    /// Its local address (`tcp#N`): pushed onto the return route of what arrives by it.
    name: Vec<u8>,
    decoder: FrameDecoder,
    out: VecDeque<Vec<u8>>,
    out_pos: usize,
    out_bytes: usize,
    up: usize,
    read_blocked: bool,
    congested: bool,
    /// Keepalives, dead peers, slow frames, stuck peers (`crate::link`).
    timers: LinkTimers,
    opts: LinkOptions,
    waiting: Vec<u64>,
    received: u64,
    sent: u64,
    failed: Option<String>,
    /// The channels whose messages may be sent on this link: a relay forwarder sent this
    /// link's messages into them, so their replies come back here (and nothing else may
    /// reach a link from outside the node).
    grants: Vec<u64>,
}

/// An inlet's listening socket. With a binding (a channel and the route beyond it, set by
/// Python after it resolved the route and checked the policy) each accepted connection becomes
/// a session here, OPEN sent at once; without one it goes to Python.
struct Inlet {
    listener: TcpListener,
    binding: Option<(u64, Vec<u8>)>,
    prefix: Vec<u8>,
    window: u64,
    resume_timeout: Duration,
    max_sessions: usize,
    sessions: Vec<u64>,
}

/// An outlet: OPENs to `name` through a channel Python authorized become sessions here,
/// connected to `target`.
struct Outlet {
    name: Vec<u8>,
    target: Option<SocketAddr>,
    allowed: Vec<u64>,
    window: u64,
    resume_timeout: Duration,
    max_sessions: usize,
    connect_timeout: Duration,
    connect_prefix: String,
    sessions: Vec<u64>,
    /// Recently ended sessions (their keys), whose late messages are dropped: a repeated OPEN
    /// must not open a second session (as `tether.services.portal`'s `_ended`).
    ended: VecDeque<Key>,
    ended_set: std::collections::HashSet<Key>,
}

/// A relay's forwarder: messages to it go on inside `channel`, onward by the relay rule
/// ([`crate::relay::forward_onward`], which `tether.services.relay`'s forwarder uses too).
struct Forward {
    channel: u64,
    route: OwnedRoute,
    forwarded: u64,
    /// The payload bytes of the messages forwarded (`docs/metrics.md`).
    forwarded_bytes: u64,
}

struct Channel {
    cipher: SharedCipher,
    /// Its encryptor's address: pushed onto the return route of what it delivers onwards.
    address: Vec<u8>,
    decryptor: Vec<u8>,
    frame_header: Vec<u8>,
    link: Option<u64>,
    /// The outer channel its messages travel in (its first hop is that channel), if any.
    via: Option<u64>,
    /// Its fragmented message being gathered (`crate::reassembly`).
    reassembler: Reassembler,
    last_activity: Instant,
    last_rx_link: Option<u64>,
    sessions: Vec<u64>,
    /// Messages refused since the last report, and the last reason.
    refused: u64,
    refused_reason: String,
    refusing: bool,
}

/// Whether a new session must wait for Python to deliver what it already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Nothing can be pending (a fresh address): go at once.
    Synced,
    /// Python holds nothing: wait only if events of the channel's link are still queued here.
    IfQueued,
    /// Python holds earlier events: wait for the [`Event::Sync`] marker.
    Always,
}

/// How Python describes a new session.
pub struct SessionSpec {
    pub channel: u64,
    pub sock: Option<OwnedFd>,
    /// The encoded inner routed message (onward to the peer session, return to this one) up
    /// to, not including, its payload length.
    pub header: Vec<u8>,
    /// Incoming inner messages are this session's when addressed to `address` (and, if given,
    /// with exactly this encoded return route) through its channel.
    pub address: Vec<u8>,
    pub match_return: Option<Vec<u8>>,
    pub window: u64,
    /// Send OPEN first (the inlet side).
    pub open: bool,
    /// Whether earlier messages of this session may still be on their way through Python
    /// (see [`Event::Sync`]).
    pub sync: SyncMode,
    pub connect_timeout: Duration,
    /// How long an established session goes on resending with nothing acknowledged.
    pub resume_timeout: Duration,
    /// Begins the reason of a failed connect (`tcp-outlet 'x' could not connect to h:p`).
    pub connect_prefix: String,
}

struct Session {
    channel: u64,
    /// The inlet or outlet that opened it here (for its session count).
    owner: Option<u64>,
    sock: Option<TcpStream>,
    connecting: Option<Instant>,
    connect_prefix: String,
    header: Vec<u8>,
    key: Key,
    /// The session's rules: flow control, half-close, its end (`crate::portal::Session`).
    flow: Flow,
    /// When it was registered, until it is open ([`Event::SessionOpened`]).
    opening: Option<Instant>,
    /// The inlet side (it sent OPEN): the outlet's OPEN in answer says the session is open.
    inlet_side: bool,
    /// Messages that arrived before Python delivered what it held (see [`Event::Sync`]).
    held: Vec<Vec<u8>>,
    held_bytes: usize,
    synced: bool,
}

struct State {
    registry: Registry,
    links: HashMap<u64, Link>,
    channels: HashMap<u64, Channel>,
    decryptors: HashMap<Vec<u8>, u64>,
    sessions: HashMap<u64, Session>,
    keys: HashMap<Key, u64>,
    link_names: HashMap<Vec<u8>, u64>,
    encryptors: HashMap<Vec<u8>, u64>,
    forwards: HashMap<Vec<u8>, Forward>,
    inlets: HashMap<u64, Inlet>,
    outlets: HashMap<u64, Outlet>,
    outlet_names: HashMap<Vec<u8>, u64>,
    events: VecDeque<Event>,
    notified: bool,
    notify: UnixStream,
    next_id: u64,
    retry_links: Vec<u64>,
    retry_sessions: Vec<u64>,
    /// What all links' messages waiting for Python count (see [`UP_TOTAL_LIMIT`]).
    up_total: usize,
    /// The links not read until Python catches up.
    blocked: Vec<u64>,
    to_close: Vec<(u64, String)>,
    rbuf: Vec<u8>,
    /// The buffer channel messages are opened into.
    plain_buf: Vec<u8>,
    /// The buffer a session's actions are collected in.
    actions: Vec<Action>,
    /// The origin of the clock the link timers read (`now` is the time since).
    epoch: Instant,
    stopping: bool,
    /// A link or session whose next event panics (tests of the containment; see `guard`).
    fault: Option<u64>,
    /// A descriptor held in reserve: when the process has none left, an inlet closes it to
    /// accept (and refuse) one connection rather than leave it waiting.
    spare: Option<std::fs::File>,
    /// How often back-pressure was applied, by kind (read at scrape time: [`Engine::stats`]).
    pressure: Backpressure,
}

/// The times the engine applied back-pressure, each counted when it began (a wait that goes
/// on is not counted again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backpressure {
    /// A portal session stopped reading its socket: its peer's flow-control window was used up
    /// (no credit).
    pub session_credit: u64,
    /// A portal session stopped reading its socket: its channel's link had more than
    /// [`HIGH_WATER`] bytes queued.
    pub session_congested: u64,
    /// A link's send queue went over [`HIGH_WATER`] (Python's sends are told to wait).
    pub link_congested: u64,
    /// A link stopped being read: its messages waiting for Python reached [`UP_LIMIT`] (or all
    /// links' reached [`UP_TOTAL_LIMIT`]).
    pub link_up_limit: u64,
}

/// The engine's counters, for a node's metrics (one call per scrape).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub backpressure: Backpressure,
}

struct Shared {
    state: Mutex<State>,
    waker: Waker,
}

/// The engine: its thread runs until [`Engine::stop`] (or drop).
pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The outcome of [`Engine::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    Sent,
    /// Queued, and the link is over its high-water mark: wait for [`Event::Drained`].
    Congested,
    Closed,
}

/// Close with RST: the other end sees a reset, not an orderly end of the stream.
fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

fn run(mut poll: Poll, shared: &Shared) {
    let mut events = Events::with_capacity(256);
    let mut last_tick = Instant::now();
    let mut timeout = TICK;
    loop {
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        match step(shared, &events, &mut last_tick) {
            Some(next) => timeout = next,
            None => return,
        }
    }
}

const INTERNAL_ERROR: &str = "internal error in the data plane";

/// Handle one batch of readiness events; the next poll's timeout, or None to stop.
fn step(shared: &Shared, events: &Events, last_tick: &mut Instant) -> Option<Duration> {
    let mut st = lock(&shared.state);
    if st.stopping {
        return None;
    }
    for ev in events {
        if ev.token() == WAKER {
            continue;
        }
        let id = ev.token().0 as u64;
        let writable = ev.is_writable();
        let error = ev.is_error();
        let closed = ev.is_read_closed() || error;
        let readable = ev.is_readable() || closed;
        st.guard(id, |st| {
            if st.links.contains_key(&id) {
                if writable {
                    st.flush_link(id);
                }
                if readable {
                    st.read_link(id, closed);
                }
            } else if st.inlets.contains_key(&id) {
                st.accept(id);
            } else if st.sessions.contains_key(&id) {
                if writable || error {
                    st.session_writable(id);
                }
                if readable {
                    st.read_session(id, closed);
                }
            }
        });
    }
    st.settle();
    if last_tick.elapsed() >= TICK {
        *last_tick = Instant::now();
        st.guard(0, State::tick);
        st.settle();
        if !st.events.is_empty() {
            st.notify_python();
        }
    }
    // Work that settle() left for later (it bounds its rounds) is picked up at once.
    let pending =
        !(st.retry_links.is_empty() && st.retry_sessions.is_empty() && st.to_close.is_empty());
    Some(if pending { Duration::ZERO } else { TICK })
}

/// EMFILE or ENFILE: the process or the system has no descriptor left.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn mio_into_std(sock: TcpStream) -> std::net::TcpStream {
    std::net::TcpStream::from(OwnedFd::from(sock))
}

/// A route of one local address, encoded as inside a routed message.
fn encoded_local_route(address: &[u8]) -> Vec<u8> {
    let mut out = vec![1, 0, 0, u8::try_from(address.len()).unwrap_or(u8::MAX)];
    out.extend_from_slice(&address[..address.len().min(255)]);
    out
}

/// A session's inner header: onward (encoded) to the peer, return to `address`.
fn session_header(onward: &[u8], address: &[u8]) -> Vec<u8> {
    let mut header = vec![route::VERSION];
    header.extend_from_slice(onward);
    header.extend_from_slice(&encoded_local_route(address));
    header
}
