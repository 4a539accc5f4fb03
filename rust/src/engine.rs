//! The data plane: one I/O thread per node that owns the node's TCP links (after their hello)
//! and its established portal sessions, so that the bytes of an established session never
//! enter Python.
//!
//! What it does on its own, per readiness event and without the GIL:
//!
//! * reads a link's frames; a message for a registered secure-channel decryptor (a `DATA`
//!   step) is opened here (replay window and rekey are the shared [`ChannelCipher`]'s) and
//!   reassembled; an inner message for a registered portal session is handled here;
//! * runs each portal session: socket → `DATA` sealed straight into a routed frame on the
//!   channel's link (within its flow-control credit), `DATA` → socket, `CREDIT`, `EOF`
//!   (half-close), `CLOSE` and resets, exactly as `tether.portal.Session` does in Python;
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
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::channel::ChannelCipher;
use crate::frame::{self, FrameDecoder};
pub use crate::portal::MAX_DATA;
use crate::portal::{
    PortalError, PortalMessage, KIND_DATA, MAX_REASON, T_CLOSE, T_CREDIT, T_DATA, T_EOF, T_OPEN,
};
use crate::route;

/// A channel's cipher, shared by Python (handshake-adjacent messages, credentials, close) and
/// the engine (bulk data).
pub type SharedCipher = Arc<Mutex<ChannelCipher>>;

const WAKER: Token = Token(0);
const LOCAL: u16 = 0;
const STEP_DATA: u8 = 4;
const FIRST: u8 = 0b10;
const LAST: u8 = 0b01;
const MIN_CHARGE: u64 = 512;
/// The largest message a channel reassembles (as `tether.channel.MAX_MESSAGE`).
const MAX_MESSAGE: usize = 16 << 20;
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

fn charge(n: usize) -> u64 {
    (n as u64).max(MIN_CHARGE)
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
    last_rx: Instant,
    last_tx: Instant,
    /// Since when the socket has taken nothing while bytes wait for it.
    tx_stalled: Option<Instant>,
    frame_started: Option<Instant>,
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
    max_sessions: usize,
    connect_timeout: Duration,
    connect_prefix: String,
    sessions: Vec<u64>,
    /// Recently ended sessions (their keys), whose late messages are dropped: a repeated OPEN
    /// must not open a second session (as `tether.portal`'s `_ended`).
    ended: VecDeque<Key>,
    ended_set: std::collections::HashSet<Key>,
}

/// How many ended sessions an outlet remembers (as `tether.portal.ENDED_MEMORY`).
const ENDED_MEMORY: usize = 4096;

/// A relay's forwarder: messages to it go on inside `channel`, to `route` + the rest of their
/// onward route (as `tether.relay` does).
struct Forward {
    channel: u64,
    route: OwnedRoute,
    forwarded: u64,
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
    partial: Vec<u8>,
    partial_on: bool,
    next_fragment: u64,
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
    /// Begins the reason of a failed connect (`tcp-outlet 'x' could not connect to h:p`).
    pub connect_prefix: String,
}

#[allow(clippy::struct_excessive_bools)] // each flag is one end of the half-close state
struct Session {
    channel: u64,
    /// The inlet or outlet that opened it here (for its session count).
    owner: Option<u64>,
    sock: Option<TcpStream>,
    connecting: Option<Instant>,
    connect_prefix: String,
    header: Vec<u8>,
    key: Key,
    window: u64,
    grant: u64,
    credit: i64,
    consumed: u64,
    queued: u64,
    queue: VecDeque<(Vec<u8>, u64)>,
    queue_pos: usize,
    held: Vec<Vec<u8>>,
    held_bytes: usize,
    synced: bool,
    peer_eof: bool,
    wrote_eof: bool,
    read_eof: bool,
    want_read: bool,
    sent: u64,
    received: u64,
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
    pbuf: Vec<u8>,
    stopping: bool,
    /// A link or session whose next event panics (tests of the containment; see `guard`).
    fault: Option<u64>,
    /// A descriptor held in reserve: when the process has none left, an inlet closes it to
    /// accept (and refuse) one connection rather than leave it waiting.
    spare: Option<std::fs::File>,
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

impl Engine {
    /// Start the thread. `notify` is written one byte whenever events become available.
    pub fn start(notify: OwnedFd) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let notify = UnixStream::from(notify);
        notify.set_nonblocking(true)?;
        let state = State {
            registry: poll.registry().try_clone()?,
            links: HashMap::new(),
            channels: HashMap::new(),
            decryptors: HashMap::new(),
            sessions: HashMap::new(),
            keys: HashMap::new(),
            link_names: HashMap::new(),
            encryptors: HashMap::new(),
            forwards: HashMap::new(),
            inlets: HashMap::new(),
            outlets: HashMap::new(),
            outlet_names: HashMap::new(),
            events: VecDeque::new(),
            notified: false,
            notify,
            next_id: 1,
            retry_links: Vec::new(),
            retry_sessions: Vec::new(),
            up_total: 0,
            blocked: Vec::new(),
            to_close: Vec::new(),
            rbuf: vec![0u8; READ_SIZE],
            pbuf: Vec::new(),
            stopping: false,
            fault: None,
            spare: spare_descriptor(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            waker,
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tether-engine".into())
            .spawn(move || run(poll, &s2))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn wake(&self) {
        let _ = self.shared.waker.wake();
    }

    /// Take over a connected TCP socket whose hello is done; `rest` is what was read after the
    /// hello (the start of the peer's frames).
    pub fn add_link(
        &self,
        fd: OwnedFd,
        name: Vec<u8>,
        rest: &[u8],
        opts: LinkOptions,
    ) -> io::Result<u64> {
        let std_sock = std::net::TcpStream::from(fd);
        std_sock.set_nonblocking(true)?;
        let mut sock = TcpStream::from_std(std_sock);
        let mut st = self.state();
        let id = st.new_id();
        st.registry.register(
            &mut sock,
            token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let now = Instant::now();
        st.link_names.insert(name.clone(), id);
        st.links.insert(
            id,
            Link {
                sock,
                name,
                decoder: FrameDecoder::new(opts.max_frame_len),
                out: VecDeque::new(),
                out_pos: 0,
                out_bytes: 0,
                up: 0,
                read_blocked: false,
                congested: false,
                last_rx: now,
                last_tx: now,
                tx_stalled: None,
                frame_started: None,
                opts,
                waiting: Vec::new(),
                received: 0,
                sent: 0,
                failed: None,
                grants: Vec::new(),
            },
        );
        if !rest.is_empty() {
            st.feed_link(id, rest);
        }
        st.retry_links.push(id);
        st.settle();
        drop(st);
        self.wake();
        Ok(id)
    }

    /// Queue one ready-made frame (or several) for a link, writing at once if nothing waits.
    pub fn send(&self, link: u64, data: Vec<u8>) -> SendStatus {
        let mut st = self.state();
        let status = match st.links.get(&link) {
            None => SendStatus::Closed,
            Some(l) if l.failed.is_some() => SendStatus::Closed,
            Some(_) => {
                st.link_send(link, data);
                match st.links.get_mut(&link) {
                    Some(l) if l.failed.is_none() => {
                        if l.out_bytes > HIGH_WATER {
                            l.congested = true;
                            SendStatus::Congested
                        } else {
                            SendStatus::Sent
                        }
                    }
                    _ => SendStatus::Closed,
                }
            }
        };
        let wake = st.settle();
        drop(st);
        if wake {
            self.wake();
        }
        status
    }

    /// Python delivered `n` bytes of a link's events.
    pub fn ack(&self, link: u64, n: usize) {
        let mut st = self.state();
        let mut wake = false;
        if let Some(l) = st.links.get_mut(&link) {
            let n = n.min(l.up);
            l.up -= n;
            st.up_total = st.up_total.saturating_sub(n);
        }
        // Links held back (their own backlog, or everyone's) are read again once it is low.
        if st.up_total < UP_TOTAL_LIMIT / 2 && !st.blocked.is_empty() {
            let now = Instant::now();
            let st = &mut *st;
            let blocked = std::mem::take(&mut st.blocked);
            for id in blocked {
                let Some(l) = st.links.get_mut(&id) else {
                    continue;
                };
                if l.up < UP_LIMIT / 2 {
                    l.read_blocked = false;
                    // Time blocked on Python is neither peer silence nor a slow frame.
                    l.last_rx = now;
                    if l.frame_started.is_some() {
                        l.frame_started = Some(now);
                    }
                    st.retry_links.push(id);
                    wake = true;
                } else {
                    st.blocked.push(id);
                }
            }
        }
        drop(st);
        if wake {
            self.wake();
        }
    }

    pub fn close_link(&self, link: u64, reason: &str) {
        let mut st = self.state();
        st.close_link(link, reason, false);
        st.settle();
    }

    /// Frames and bytes counters of a link: `(received frames, sent frames, queued bytes)`.
    pub fn link_stats(&self, link: u64) -> Option<(u64, u64, usize)> {
        let st = self.state();
        st.links
            .get(&link)
            .map(|l| (l.received, l.sent, l.out_bytes))
    }

    pub fn add_channel(
        &self,
        address: Vec<u8>,
        cipher: SharedCipher,
        frame_header: Vec<u8>,
        link: Option<u64>,
        via: Option<u64>,
    ) -> u64 {
        let mut st = self.state();
        let id = st.new_id();
        let mut decryptor = address.clone();
        decryptor.extend_from_slice(b".in");
        st.decryptors.insert(decryptor.clone(), id);
        st.encryptors.insert(address.clone(), id);
        st.channels.insert(
            id,
            Channel {
                cipher,
                address,
                decryptor,
                frame_header,
                link,
                via,
                partial: Vec::new(),
                partial_on: false,
                next_fragment: 0,
                last_activity: Instant::now(),
                last_rx_link: None,
                sessions: Vec::new(),
                refused: 0,
                refused_reason: String::new(),
                refusing: false,
            },
        );
        id
    }

    /// The channel closed: its sessions are reset with `reason`.
    pub fn remove_channel(&self, channel: u64, reason: &str) {
        let mut st = self.state();
        if let Some(ch) = st.channels.remove(&channel) {
            st.decryptors.remove(&ch.decryptor);
            st.encryptors.remove(&ch.address);
            for inlet in st.inlets.values_mut() {
                if inlet.binding.as_ref().is_some_and(|b| b.0 == channel) {
                    inlet.binding = None;
                }
            }
            for outlet in st.outlets.values_mut() {
                outlet.allowed.retain(|&c| c != channel);
            }
            st.forwards.retain(|_, f| f.channel != channel);
            for l in st.links.values_mut() {
                l.grants.retain(|&c| c != channel);
            }
            for sid in ch.sessions {
                st.finish(sid, reason, true, false);
            }
        }
        st.settle();
    }

    /// Seconds since the channel last carried a message the engine handled.
    pub fn channel_idle(&self, channel: u64) -> Option<f64> {
        let st = self.state();
        st.channels
            .get(&channel)
            .map(|c| c.last_activity.elapsed().as_secs_f64())
    }

    pub fn add_session(&self, spec: SessionSpec) -> Result<u64, String> {
        let mut st = self.state();
        let id = st.new_session(spec)?;
        st.settle();
        drop(st);
        self.wake();
        Ok(id)
    }

    /// Connect a session registered without a socket (the outlet side) to its target.
    pub fn session_connect(&self, session: u64, addr: SocketAddr) {
        let mut st = self.state();
        st.connect(session, addr);
        st.settle();
        drop(st);
        self.wake();
    }

    /// A message of the session that reached Python before the session existed here.
    pub fn session_deliver(&self, session: u64, payload: &[u8]) {
        let mut st = self.state();
        st.deliver(session, payload);
        st.settle();
        drop(st);
        self.wake();
    }

    /// Python delivered everything before the session's [`Event::Sync`]: what arrived here
    /// meanwhile is processed now, in order.
    pub fn session_synced(&self, session: u64) {
        let mut st = self.state();
        if let Some(s) = st.sessions.get_mut(&session) {
            s.synced = true;
            let held = std::mem::take(&mut s.held);
            s.held_bytes = 0;
            for p in held {
                st.deliver(session, &p);
            }
        }
        st.settle();
        drop(st);
        self.wake();
    }

    /// End a session now (a policy no longer allows it, its inlet was deleted, ...).
    pub fn close_session(&self, session: u64, reason: &str, notify: bool) {
        let mut st = self.state();
        st.finish(session, reason, true, notify);
        st.settle();
    }

    /// `(sent, received, held)` bytes of a live session: `held` is what it holds in memory
    /// (received, not yet written to its socket).
    pub fn session_stats(&self, session: u64) -> Option<(u64, u64, u64)> {
        let st = self.state();
        st.sessions.get(&session).map(|s| {
            let queued: usize = s.queue.iter().map(|(b, _)| b.len()).sum::<usize>() - s.queue_pos;
            let held: usize = s.held.iter().map(Vec::len).sum();
            (s.sent, s.received, (queued + held) as u64)
        })
    }

    /// Take over an inlet's listening socket; returns the inlet's id. Session addresses are
    /// `prefix` + the session id.
    pub fn add_inlet(
        &self,
        fd: OwnedFd,
        prefix: Vec<u8>,
        window: u64,
        max_sessions: usize,
    ) -> io::Result<u64> {
        let std_listener = std::net::TcpListener::from(fd);
        std_listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(std_listener);
        let mut st = self.state();
        let id = st.new_id();
        st.registry
            .register(&mut listener, token(id), Interest::READABLE)?;
        st.inlets.insert(
            id,
            Inlet {
                listener,
                binding: None,
                prefix,
                window: window.max(1),
                max_sessions,
                sessions: Vec::new(),
            },
        );
        drop(st);
        self.wake();
        Ok(id)
    }

    /// Open the inlet's next connections through `channel` (None: hand them to Python), to the
    /// encoded route `onward` beyond it.
    pub fn bind_inlet(&self, inlet: u64, binding: Option<(u64, Vec<u8>)>) {
        let mut st = self.state();
        let st = &mut *st;
        let valid = match &binding {
            None => true,
            Some((c, _)) => st.channels.get(c).is_some_and(|ch| ch.link.is_some()),
        };
        if let Some(i) = st.inlets.get_mut(&inlet) {
            i.binding = if valid { binding } else { None };
        }
    }

    /// Close the inlet's listening socket (its sessions go on until Python ends them).
    pub fn remove_inlet(&self, inlet: u64) {
        let mut st = self.state();
        if let Some(mut i) = st.inlets.remove(&inlet) {
            let _ = st.registry.deregister(&mut i.listener);
        }
    }

    pub fn add_outlet(
        &self,
        name: Vec<u8>,
        window: u64,
        max_sessions: usize,
        connect_timeout: Duration,
        connect_prefix: String,
    ) -> u64 {
        let mut st = self.state();
        let id = st.new_id();
        st.outlet_names.insert(name.clone(), id);
        st.outlets.insert(
            id,
            Outlet {
                name,
                target: None,
                allowed: Vec::new(),
                window: window.max(1),
                max_sessions,
                connect_timeout,
                connect_prefix,
                sessions: Vec::new(),
                ended: VecDeque::new(),
                ended_set: std::collections::HashSet::new(),
            },
        );
        id
    }

    /// The address the outlet connects its sessions to (None: Python resolves each time).
    pub fn set_outlet_target(&self, outlet: u64, target: Option<SocketAddr>) {
        if let Some(o) = self.state().outlets.get_mut(&outlet) {
            o.target = target;
        }
    }

    /// Whether OPENs through `channel` may become sessions of the outlet without asking Python
    /// (Python checked the channel's peer against the outlet's policy).
    pub fn allow_outlet(&self, outlet: u64, channel: u64, allowed: bool) {
        let mut st = self.state();
        let st = &mut *st;
        let known = st.channels.contains_key(&channel);
        if let Some(o) = st.outlets.get_mut(&outlet) {
            o.allowed.retain(|&c| c != channel);
            if allowed && known {
                o.allowed.push(channel);
            }
        }
    }

    pub fn remove_outlet(&self, outlet: u64) {
        let mut st = self.state();
        if let Some(o) = st.outlets.remove(&outlet) {
            st.outlet_names.remove(&o.name);
        }
    }

    /// Forward messages to the local address `name` inside `channel`, to `route` + the rest
    /// of their onward route (None: stop).
    pub fn set_forward(&self, name: Vec<u8>, forward: Option<(u64, OwnedRoute)>) {
        let mut st = self.state();
        match forward {
            Some((channel, route)) => {
                let forwarded = st.forwards.get(&name).map_or(0, |f| f.forwarded);
                st.forwards.insert(
                    name,
                    Forward {
                        channel,
                        route,
                        forwarded,
                    },
                );
            }
            None => {
                st.forwards.remove(&name);
            }
        }
    }

    /// Let `channel`'s messages go out on `link` (a relay forwarder sent the link's messages
    /// into the channel: its replies come back).
    pub fn grant(&self, link: u64, channel: u64) {
        let mut st = self.state();
        if st.channels.contains_key(&channel) {
            st.grant(link, channel);
        }
    }

    /// Whether `channel`'s messages may go out on `link`.
    pub fn granted(&self, link: u64, channel: u64) -> bool {
        self.state().granted(link, channel)
    }

    /// Whether `link` forwards for any channel (a relay's client: it is in use).
    pub fn has_grants(&self, link: u64) -> bool {
        self.state()
            .links
            .get(&link)
            .is_some_and(|l| !l.grants.is_empty())
    }

    /// Make the next event of link or session `id` panic, as a bug would: for tests that
    /// a failure stays contained to its link or session.
    pub fn inject_fault(&self, id: u64) {
        self.state().fault = Some(id);
        self.wake();
    }

    /// Messages forwarded at `name` by the engine.
    pub fn forwarded(&self, name: &[u8]) -> u64 {
        self.state().forwards.get(name).map_or(0, |f| f.forwarded)
    }

    pub fn take_events(&self) -> Vec<Event> {
        let mut st = self.state();
        st.notified = false;
        st.events.drain(..).collect()
    }

    /// Stop the thread and close every socket it holds.
    pub fn stop(&self) {
        {
            let mut st = self.state();
            st.stopping = true;
        }
        self.wake();
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        let mut st = self.state();
        for (_, l) in st.links.drain() {
            let _ = l.sock.shutdown(Shutdown::Both);
        }
        for (_, s) in st.sessions.drain() {
            if let Some(sock) = s.sock {
                reset(&sock);
            }
        }
        st.channels.clear();
        st.keys.clear();
        st.decryptors.clear();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
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

impl State {
    /// Run `f` for the link or session `id`; if it panics (a bug), only that link or session
    /// fails (Python hears why and closes it) and the engine goes on serving the others. For
    /// work that belongs to no one object (`id` 0, the timers), every link fails instead of
    /// leaving the node silently deaf.
    fn guard(&mut self, id: u64, f: impl FnOnce(&mut Self)) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if id != 0 && self.fault == Some(id) {
                self.fault = None;
                panic!("a fault injected for a test (Engine::inject_fault)");
            }
            f(self);
        }));
        if done.is_ok() {
            return;
        }
        let contained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.links.contains_key(&id) {
                self.fail_link(id, INTERNAL_ERROR.into());
            } else if self.sessions.contains_key(&id) {
                self.finish(id, INTERNAL_ERROR, true, true);
            } else if id == 0 {
                let ids: Vec<u64> = self.links.keys().copied().collect();
                for link in ids {
                    self.fail_link(link, INTERNAL_ERROR.into());
                }
            }
        }));
        if contained.is_err() {
            // Failing it failed too: at least never use the object again.
            self.links.remove(&id);
            self.sessions.remove(&id);
        }
    }

    /// The read buffer (a fresh one if it is out: reads never nest, but an empty buffer must
    /// never be read into, which would look like the end of the stream).
    fn take_rbuf(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.rbuf);
        if buf.len() < READ_SIZE {
            vec![0u8; READ_SIZE]
        } else {
            buf
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn push(&mut self, ev: Event) {
        // Bookkeeping (a session the engine opened or ended) is not urgent: Python hears of it
        // with the next urgent event or tick, so it does not compete for the CPU with the
        // bytes of a connection that is opening.
        let lazy = matches!(
            ev,
            Event::InletSession { .. } | Event::OutletSession { .. } | Event::SessionClosed { .. }
        );
        self.events.push_back(ev);
        if !lazy {
            self.notify_python();
        }
    }

    fn notify_python(&mut self) {
        if !self.notified {
            self.notified = true;
            let _ = self.notify.write(&[1]);
        }
    }

    /// Work that was deferred to a safe point: retries and closes. Returns whether the engine
    /// thread should look again (always fine to ignore on the engine thread itself).
    fn settle(&mut self) -> bool {
        let mut any = false;
        for _ in 0..4 {
            let links = std::mem::take(&mut self.retry_links);
            let sessions = std::mem::take(&mut self.retry_sessions);
            let closes = std::mem::take(&mut self.to_close);
            if links.is_empty() && sessions.is_empty() && closes.is_empty() {
                break;
            }
            any = true;
            for (id, reason) in closes {
                self.guard(id, |st| st.close_link(id, &reason, true));
            }
            for id in links {
                self.guard(id, |st| {
                    st.flush_link(id);
                    st.read_link(id, true);
                });
            }
            for id in sessions {
                self.guard(id, |st| {
                    st.session_writable(id);
                    st.read_session(id, true);
                });
            }
        }
        any
    }

    // --- links ------------------------------------------------------------------------------

    fn fail_link(&mut self, id: u64, reason: String) {
        if let Some(l) = self.links.get_mut(&id) {
            if l.failed.is_none() {
                l.failed = Some(reason.clone());
                self.to_close.push((id, reason));
            }
        }
    }

    fn close_link(&mut self, id: u64, reason: &str, report: bool) {
        let Some(mut l) = self.links.remove(&id) else {
            return;
        };
        self.up_total = self.up_total.saturating_sub(l.up);
        self.link_names.remove(&l.name);
        let _ = self.registry.deregister(&mut l.sock);
        let _ = l.sock.shutdown(Shutdown::Both);
        let mut unsent: Vec<Vec<u8>> = l.out.into_iter().collect();
        if l.out_pos > 0 && !unsent.is_empty() {
            unsent.remove(0); // partly written: neither sent nor safe to report as unsent
        }
        if report {
            self.push(Event::LinkClosed {
                link: id,
                reason: reason.to_string(),
                unsent,
            });
        }
        for sid in l.waiting {
            self.retry_sessions.push(sid);
        }
    }

    fn link_send(&mut self, id: u64, data: Vec<u8>) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        if l.failed.is_some() || data.is_empty() {
            return;
        }
        l.out_bytes += data.len();
        l.out.push_back(data);
        if l.out.len() == 1 {
            self.flush_link(id);
        }
    }

    fn flush_link(&mut self, id: u64) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        while !l.out.is_empty() && l.failed.is_none() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(l.out.len().min(64));
            for (i, b) in l.out.iter().take(64).enumerate() {
                slices.push(IoSlice::new(if i == 0 { &b[l.out_pos..] } else { b }));
            }
            match l.sock.write_vectored(&slices) {
                Ok(0) => {
                    let reason = "send failed: the connection is closed".to_string();
                    l.failed = Some(reason.clone());
                    self.to_close.push((id, reason));
                    return;
                }
                Ok(mut n) => {
                    l.last_tx = Instant::now();
                    l.tx_stalled = None;
                    l.out_bytes -= n;
                    while n > 0 {
                        let front = l.out[0].len() - l.out_pos;
                        if n >= front {
                            n -= front;
                            l.out.pop_front();
                            l.out_pos = 0;
                            l.sent += 1;
                        } else {
                            l.out_pos += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.tx_stalled.get_or_insert_with(Instant::now);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("send failed: {}", why(&e));
                    l.failed = Some(reason.clone());
                    self.to_close.push((id, reason));
                    return;
                }
            }
        }
        if l.out_bytes <= LOW_WATER {
            if l.congested {
                l.congested = false;
                self.push(Event::Drained { link: id });
            }
            if let Some(l) = self.links.get_mut(&id) {
                let waiting = std::mem::take(&mut l.waiting);
                self.retry_sessions.extend(waiting);
            }
        }
    }

    #[allow(clippy::while_let_loop)] // the loop also ends on a read result
    /// Read what the link has. A short read means the socket was drained (the next data makes
    /// a new edge), so it stops there unless `drain` (the peer's FIN is in the same event, or
    /// this is a retry): then it reads until the socket would block.
    fn read_link(&mut self, id: u64, drain: bool) {
        let mut rbuf = self.take_rbuf();
        loop {
            let Some(l) = self.links.get_mut(&id) else {
                break;
            };
            if l.failed.is_some() {
                break;
            }
            if l.up >= UP_LIMIT || self.up_total >= UP_TOTAL_LIMIT {
                if !l.read_blocked {
                    l.read_blocked = true;
                    self.blocked.push(id);
                }
                break;
            }
            match l.sock.read(&mut rbuf) {
                Ok(0) => {
                    self.fail_link(id, "closed by peer".into());
                    break;
                }
                Ok(n) => {
                    self.feed_link(id, &rbuf[..n]);
                    if n < rbuf.len() && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = if e.kind() == io::ErrorKind::ConnectionReset {
                        "closed by peer".to_string()
                    } else {
                        format!("socket error: {}", why(&e))
                    };
                    self.fail_link(id, reason);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
    }

    fn feed_link(&mut self, id: u64, data: &[u8]) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        l.last_rx = now;
        let mut decoder = std::mem::replace(&mut l.decoder, FrameDecoder::new(0));
        let mut failure: Option<String> = None;
        let res = decoder.feed(data, |f| {
            if failure.is_none() {
                if let Err(e) = self.handle_frame(id, f) {
                    failure = Some(e);
                }
            }
        });
        if let Err(e) = res {
            failure.get_or_insert(format!("bad framing: {e}"));
        }
        let buffered = decoder.buffered();
        if let Some(l) = self.links.get_mut(&id) {
            l.decoder = decoder;
            if buffered == 0 {
                l.frame_started = None;
            } else if l.frame_started.is_none() {
                l.frame_started = Some(now);
            }
        }
        if let Some(reason) = failure {
            self.fail_link(id, reason);
        }
    }

    fn handle_frame(&mut self, link: u64, f: &[u8]) -> Result<(), String> {
        if f.is_empty() {
            return Ok(()); // keepalive: not a message
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.received += 1;
        }
        let m = route::decode(f).map_err(|e| format!("malformed message from the peer: {e}"))?;
        if let Some(a) = m.onward.first() {
            if a.transport == LOCAL
                && m.payload.len() >= 2
                && m.payload[0] == KIND_DATA
                && m.payload[1] == STEP_DATA
            {
                if let Some(&cid) = self.decryptors.get(a.value) {
                    self.decrypt(link, cid, &m.payload[2..], 0);
                    return Ok(());
                }
            }
            // A relay forwarder: into its claimer's channel; or that channel's encryptor
            // itself, which a link may use only once it was granted the channel (it sent
            // through the forwarder, and goes on along the return route it got back). Any
            // other channel's encryptor is for local callers only: Python refuses it.
            if a.transport == LOCAL {
                if let Some(&cid) = self.encryptors.get(a.value) {
                    if self.granted(link, cid) && self.seal_forward(link, cid, &[], &m) {
                        return Ok(());
                    }
                } else if let Some(f) = self.forwards.get(a.value) {
                    let (cid, prefix) = (f.channel, f.route.clone());
                    if self.seal_forward(link, cid, &prefix, &m) {
                        if let Some(f) = self.forwards.get_mut(a.value) {
                            f.forwarded += 1;
                        }
                        self.grant(link, cid);
                        return Ok(());
                    }
                }
            }
        }
        self.up(link, f.len());
        self.push(Event::Message {
            link,
            frame: f.to_vec(),
        });
        Ok(())
    }

    fn grant(&mut self, link: u64, channel: u64) {
        if let Some(l) = self.links.get_mut(&link) {
            if !l.grants.contains(&channel) {
                l.grants.push(channel);
            }
        }
    }

    fn granted(&self, link: u64, channel: u64) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.grants.contains(&channel))
    }

    /// A message of `len` bytes of `link` now waits for Python.
    fn up(&mut self, link: u64, len: usize) {
        if let Some(l) = self.links.get_mut(&link) {
            let n = event_charge(len);
            l.up += n;
            self.up_total += n;
        }
    }

    /// The first refusal of a tick is reported at once (in order with what follows it); the
    /// rest of a burst is counted and reported at the tick.
    fn refuse(&mut self, channel: u64, reason: String) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.refusing {
            ch.refused += 1;
            ch.refused_reason = reason;
        } else {
            ch.refusing = true;
            self.push(Event::Refused {
                channel,
                count: 1,
                reason,
            });
        }
    }

    fn decrypt(&mut self, link: u64, cid: u64, body: &[u8], depth: usize) {
        let Some(ch) = self.channels.get_mut(&cid) else {
            return;
        };
        let len = match ChannelCipher::opened_len(body) {
            Ok(n) => n,
            Err(e) => return self.refuse(cid, e.to_string()),
        };
        let mut plain = std::mem::take(&mut self.pbuf);
        plain.clear();
        plain.resize(len, 0);
        let opened = lock(&ch.cipher).open_to_ad(&[STEP_DATA], body, &mut plain);
        let nonce = match opened {
            Ok(n) => n,
            Err(e) => {
                self.pbuf = plain;
                return self.refuse(cid, e.to_string());
            }
        };
        ch.last_activity = Instant::now();
        ch.last_rx_link = Some(link);
        if plain.is_empty() || plain[0] > FIRST | LAST {
            self.pbuf = plain;
            return self.refuse(cid, "malformed fragment flags".into());
        }
        let flags = plain[0];
        if flags == FIRST | LAST && !ch.partial_on {
            self.inner(link, cid, &plain[1..], depth);
            self.pbuf = plain;
            return;
        }
        // Fragments of a larger message.
        if flags & FIRST != 0 {
            ch.partial.clear();
            ch.partial_on = true;
        } else if !ch.partial_on {
            let plain_copy = plain.clone();
            self.pbuf = plain;
            self.up(link, plain_copy.len());
            self.push(Event::Plain {
                link,
                channel: cid,
                plain: plain_copy,
                nonce,
            });
            return;
        } else if nonce != ch.next_fragment {
            ch.partial = Vec::new();
            ch.partial_on = false;
            self.pbuf = plain;
            return self.refuse(cid, "a fragmented message lost a part; dropped".into());
        }
        if ch.partial.len() + plain.len() - 1 > MAX_MESSAGE {
            ch.partial = Vec::new();
            ch.partial_on = false;
            self.pbuf = plain;
            return self.refuse(cid, format!("message over {MAX_MESSAGE} bytes dropped"));
        }
        ch.partial.extend_from_slice(&plain[1..]);
        ch.next_fragment = nonce.wrapping_add(1);
        self.pbuf = plain;
        if flags & LAST == 0 {
            return;
        }
        let whole = std::mem::take(&mut ch.partial);
        ch.partial_on = false;
        self.inner(link, cid, &whole, depth);
    }

    /// A whole inner message from channel `cid`.
    fn inner(&mut self, link: u64, cid: u64, whole: &[u8], depth: usize) {
        let m = match route::decode(whole) {
            Ok(m) => m,
            Err(e) => return self.refuse(cid, format!("malformed inner message: {e}")),
        };
        if let Some(a) = m.onward.first() {
            if a.transport == LOCAL && depth < MAX_NESTING {
                // A channel inside this one: open it here too.
                if m.payload.len() >= 2 && m.payload[..2] == [KIND_DATA, STEP_DATA] {
                    if let Some(&inner_cid) = self.decryptors.get(a.value) {
                        self.decrypt(link, inner_cid, &m.payload[2..], depth + 1);
                        return;
                    }
                }
                // Back out by one of the engine's links (a relay's claimer answering a client
                // whose messages it forwarded: only links granted to this channel).
                if let Some(&out) = self.link_names.get(a.value) {
                    if self.granted(out, cid) && self.deliver_to_link(cid, out, &m) {
                        return;
                    }
                }
            }
        }
        if m.onward.len() == 1 && m.onward[0].transport == LOCAL {
            let addr = m.onward[0].value.to_vec();
            let mut key = (cid, addr, None);
            let mut sid = self.keys.get(&key).copied();
            if sid.is_none() {
                let onward_len: usize =
                    1 + m.onward.iter().map(|a| 3 + a.value.len()).sum::<usize>();
                let start = 1 + onward_len;
                let end = whole.len() - 4 - m.payload.len();
                key.2 = Some(whole[start..end].to_vec());
                sid = self.keys.get(&key).copied();
            }
            if sid.is_none()
                && m.payload.len() >= 2
                && m.payload[0] == KIND_DATA
                && m.payload[1] == T_OPEN
            {
                if let Some(&oid) = self.outlet_names.get(&key.1) {
                    if let Some(ret) = key.2.clone() {
                        if self.outlet_open(oid, cid, ret) {
                            return;
                        }
                    }
                }
            }
            if let Some(sid) = sid {
                let payload = m.payload;
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if !s.synced {
                        s.held_bytes += payload.len();
                        if s.held_bytes as u64 > s.window + 2 * charge(MAX_DATA) {
                            self.finish(
                                sid,
                                "protocol error: the peer overran its flow-control window",
                                true,
                                true,
                            );
                        } else {
                            s.held.push(payload.to_vec());
                        }
                        return;
                    }
                }
                self.deliver(sid, payload);
                return;
            }
        }
        self.up(link, whole.len());
        self.push(Event::Inner {
            link,
            channel: cid,
            message: whole.to_vec(),
        });
    }

    // --- sessions ---------------------------------------------------------------------------

    fn new_session(&mut self, spec: SessionSpec) -> Result<u64, String> {
        let st = self;
        let Some(ch) = st.channels.get(&spec.channel) else {
            return Err("the secure channel is not in the data plane".into());
        };
        let link = ch.link;
        let last_rx_link = ch.last_rx_link;
        let key = (spec.channel, spec.address, spec.match_return);
        if st.keys.contains_key(&key) {
            return Err("a session with this address exists".into());
        }
        let id = st.new_id();
        let mut sock = match spec.sock {
            Some(fd) => {
                let s = std::net::TcpStream::from(fd);
                s.set_nonblocking(true).map_err(|e| why(&e))?;
                let _ = s.set_nodelay(true);
                Some(TcpStream::from_std(s))
            }
            None => None,
        };
        if let Some(s) = sock.as_mut() {
            st.registry
                .register(s, token(id), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| why(&e))?;
        }
        let window = spec.window.max(1);
        let sync_link = last_rx_link.or(link);
        let synced = match spec.sync {
            SyncMode::Synced => true,
            SyncMode::Always => false,
            SyncMode::IfQueued => !st.events.iter().any(|e| match e {
                Event::Message { link, .. }
                | Event::Inner { link, .. }
                | Event::Plain { link, .. } => Some(*link) == sync_link,
                _ => false,
            }),
        };
        st.keys.insert(key.clone(), id);
        st.sessions.insert(
            id,
            Session {
                channel: spec.channel,
                owner: None,
                // Without a socket the target is not connected yet: its timeout runs from now.
                connecting: sock
                    .is_none()
                    .then(|| Instant::now() + spec.connect_timeout),
                sock,
                connect_prefix: spec.connect_prefix,
                header: spec.header,
                key,
                window,
                grant: (window / 4).max(1),
                credit: i64::try_from(window).unwrap_or(i64::MAX),
                consumed: 0,
                queued: 0,
                queue: VecDeque::new(),
                queue_pos: 0,
                held: Vec::new(),
                held_bytes: 0,
                synced,
                peer_eof: false,
                wrote_eof: false,
                read_eof: false,
                want_read: false,
                sent: 0,
                received: 0,
            },
        );
        if let Some(ch) = st.channels.get_mut(&spec.channel) {
            ch.sessions.push(id);
        }
        if spec.open {
            if let Err(e) = st.send_portal(id, T_OPEN, &[]) {
                st.finish(id, &format!("could not open the session: {e}"), true, false);
                return Ok(id);
            }
        }
        if !synced {
            st.push(Event::Sync {
                link: sync_link,
                session: id,
            });
        }
        st.retry_sessions.push(id);
        Ok(id)
    }

    /// Seal a portal message of session `sid` into a routed frame on its channel's link.
    fn send_portal(&mut self, sid: u64, t: u8, body: &[u8]) -> Result<(), String> {
        let n = 2 + body.len();
        let len_bytes = u32::try_from(n)
            .map_err(|_| "message too large")?
            .to_be_bytes();
        let head = [KIND_DATA, t];
        let s = self.sessions.get_mut(&sid).ok_or("the session ended")?;
        // Lent out for the call (no copy per message), then put back.
        let (cid, header) = (s.channel, std::mem::take(&mut s.header));
        let sent = self.send_sealed(cid, &[&header, &len_bytes, &head, body], 0);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.header = header;
        }
        sent
    }

    /// The link a channel's messages leave by: its own first hop, or its outer channel's.
    fn channel_link(&self, cid: u64) -> Option<u64> {
        let mut cid = cid;
        for _ in 0..=MAX_NESTING {
            let ch = self.channels.get(&cid)?;
            match (ch.link, ch.via) {
                (Some(link), _) => return Some(link),
                (None, Some(outer)) => cid = outer,
                (None, None) => return None,
            }
        }
        None
    }

    /// Seal the inner message `parts` (concatenated) as one whole DATA message of channel
    /// `cid` and send it: as a frame on the channel's link, or inside its outer channel.
    fn send_sealed(&mut self, cid: u64, parts: &[&[u8]], depth: usize) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err("channels nested too deeply".into());
        }
        let ch = self.channels.get(&cid).ok_or("the secure channel closed")?;
        let flag = [FIRST | LAST];
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&flag);
        all.extend_from_slice(parts);
        let plain: usize = all.iter().map(|p| p.len()).sum();
        let payload_len = 2 + ChannelCipher::sealed_len(plain);
        let message_len = ch.frame_header.len() + 4 + payload_len;
        let payload_hdr = frame::header(payload_len).map_err(|e| e.to_string())?;
        let (link, via) = (ch.link, ch.via);
        // A frame for the link (its 4-byte length first), or the inner message for the outer
        // channel.
        let lead = if link.is_some() { 4 } else { 0 };
        let mut buf = Vec::with_capacity(lead + message_len);
        if link.is_some() {
            let frame_hdr = frame::header(message_len).map_err(|e| e.to_string())?;
            buf.extend_from_slice(&frame_hdr);
        }
        buf.extend_from_slice(&ch.frame_header);
        buf.extend_from_slice(&payload_hdr);
        buf.extend_from_slice(&[KIND_DATA, STEP_DATA]);
        let pos = buf.len();
        buf.resize(lead + message_len, 0);
        lock(&ch.cipher)
            .seal_parts_to_ad(&[STEP_DATA], &all, &mut buf[pos..])
            .map_err(|e| e.to_string())?;
        match (link, via) {
            (Some(link), _) => {
                if !matches!(self.links.get(&link), Some(l) if l.failed.is_none()) {
                    return Err("the secure channel's connection closed".into());
                }
                self.link_send(link, buf);
                Ok(())
            }
            (None, Some(outer)) => self.send_sealed(outer, &[&buf], depth + 1),
            (None, None) => Err("the secure channel has no connection".into()),
        }
    }

    fn session_link_congested(&mut self, sid: u64) -> bool {
        let Some(s) = self.sessions.get(&sid) else {
            return false;
        };
        let link = self.channel_link(s.channel);
        match link.and_then(|l| self.links.get_mut(&l)) {
            Some(l) if l.out_bytes > HIGH_WATER => {
                l.waiting.push(sid);
                true
            }
            _ => false,
        }
    }

    #[allow(clippy::while_let_loop)]
    /// Read the session's socket while it has credit (`drain`: as in [`Self::read_link`]).
    fn read_session(&mut self, sid: u64, drain: bool) {
        let mut rbuf = self.take_rbuf();
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                break;
            };
            if s.read_eof || s.connecting.is_some() || s.sock.is_none() {
                break;
            }
            if s.credit <= 0 {
                s.want_read = true;
                break;
            }
            if self.session_link_congested(sid) {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.want_read = true;
                }
                break;
            }
            let Some(s) = self.sessions.get_mut(&sid) else {
                break;
            };
            s.want_read = false;
            let Some(sock) = s.sock.as_mut() else {
                break;
            };
            match sock.read(&mut rbuf[..MAX_DATA]) {
                Ok(0) => {
                    s.read_eof = true;
                    if let Err(e) = self.send_portal(sid, T_EOF, &[]) {
                        self.finish(
                            sid,
                            &format!("could not send to the peer: {e}"),
                            true,
                            false,
                        );
                    } else {
                        self.check_done(sid);
                    }
                    break;
                }
                Ok(n) => {
                    s.credit -= i64::try_from(charge(n)).unwrap_or(i64::MAX);
                    s.sent += n as u64;
                    if let Err(e) = self.send_portal(sid, T_DATA, &rbuf[..n]) {
                        self.finish(
                            sid,
                            &format!("could not send to the peer: {e}"),
                            true,
                            false,
                        );
                        break;
                    }
                    if n < MAX_DATA && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("the local connection failed: {}", why(&e));
                    self.finish(sid, &reason, true, true);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
    }

    /// One message from the peer session (payload: kind byte, type byte, body).
    fn deliver(&mut self, sid: u64, payload: &[u8]) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let message = match PortalMessage::decode(payload) {
            Ok(m) => m,
            // The session's state comes first: any DATA after EOF is that error, whatever
            // its size (as tether.portal.Session decides).
            Err(PortalError::DataTooLarge(_)) if s.peer_eof => {
                self.finish(sid, "protocol error: DATA after EOF", true, true);
                return;
            }
            Err(e) => {
                self.finish(sid, &e.to_string(), true, true);
                return;
            }
        };
        match message {
            PortalMessage::PathFailed(reason) => {
                let reason = String::from_utf8_lossy(reason).into_owned();
                self.finish(
                    sid,
                    &format!("the path to the peer failed: {reason}"),
                    true,
                    false,
                );
            }
            PortalMessage::Data(mut body) => {
                if s.peer_eof {
                    self.finish(sid, "protocol error: DATA after EOF", true, true);
                    return;
                }
                let c = charge(body.len());
                s.received += body.len() as u64;
                if s.queue.is_empty() && s.connecting.is_none() {
                    if let Some(sock) = s.sock.as_mut() {
                        match sock.write(body) {
                            Ok(n) => body = &body[n..],
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                                ) => {}
                            Err(e) => {
                                let reason = format!("the local connection failed: {}", why(&e));
                                self.finish(sid, &reason, true, true);
                                return;
                            }
                        }
                        if body.is_empty() {
                            s.consumed += c;
                            self.maybe_credit(sid);
                            return;
                        }
                    }
                }
                s.queued += c;
                if s.queued > s.window + charge(MAX_DATA) {
                    self.finish(
                        sid,
                        "protocol error: the peer overran its flow-control window",
                        true,
                        true,
                    );
                    return;
                }
                s.queue.push_back((body.to_vec(), c));
            }
            PortalMessage::Credit(n) => {
                s.credit = s.credit.saturating_add(i64::from(n));
                if s.want_read {
                    self.retry_sessions.push(sid);
                }
            }
            PortalMessage::Eof => {
                s.peer_eof = true;
                self.session_writable(sid);
            }
            PortalMessage::Close(reason) => {
                let mut reason = String::from_utf8_lossy(reason).into_owned();
                if reason.is_empty() {
                    reason = "closed by the peer".into();
                }
                self.finish(sid, &reason, true, false);
            }
            PortalMessage::Open => {} // a repeated OPEN is harmless
        }
    }

    fn maybe_credit(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.consumed < s.grant {
            return;
        }
        let n = u32::try_from(s.consumed).unwrap_or(u32::MAX);
        s.consumed -= u64::from(n);
        if let Err(e) = self.send_portal(sid, T_CREDIT, &n.to_be_bytes()) {
            self.finish(
                sid,
                &format!("could not send to the peer: {e}"),
                true,
                false,
            );
        }
    }

    fn session_writable(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.connecting.is_some() {
            let Some(sock) = s.sock.as_ref() else {
                return; // not connecting yet: Python resolves the address first
            };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    let reason = format!("{}: {}", s.connect_prefix, why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => {
                    s.connecting = None;
                    let _ = sock.set_nodelay(true);
                    self.retry_sessions.push(sid);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let reason = format!("{}: {}", s.connect_prefix, why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(sock) = s.sock.as_mut() else {
            return;
        };
        while let Some((front, c)) = s.queue.front() {
            match sock.write(&front[s.queue_pos..]) {
                Ok(n) => {
                    s.queue_pos += n;
                    if s.queue_pos >= front.len() {
                        let c = *c;
                        s.queue.pop_front();
                        s.queue_pos = 0;
                        s.queued -= c;
                        s.consumed += c;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("the local connection failed: {}", why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
            }
        }
        let done_writing = s.queue.is_empty() && s.peer_eof && !s.wrote_eof;
        if done_writing {
            s.wrote_eof = true;
            let _ = sock.shutdown(Shutdown::Write);
        }
        self.maybe_credit(sid);
        if done_writing {
            self.check_done(sid);
        }
    }

    fn check_done(&mut self, sid: u64) {
        if let Some(s) = self.sessions.get(&sid) {
            if s.read_eof && s.wrote_eof {
                self.finish(sid, "", false, false);
            }
        }
    }

    fn connect(&mut self, sid: u64, addr: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.sock.is_some() {
            return;
        }
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                if let Err(e) = self.registry.register(
                    &mut sock,
                    token(sid),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    let reason = format!("{}: {}", s.connect_prefix, why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
                s.sock = Some(sock);
            }
            Err(e) => {
                let reason = format!("{}: {}", s.connect_prefix, why(&e));
                self.finish(sid, &reason, true, true);
            }
        }
    }

    /// End a session: `abort` resets its socket (else an orderly close), `notify` tells the
    /// peer why. Python learns through [`Event::SessionClosed`].
    fn finish(&mut self, sid: u64, reason: &str, abort: bool, notify: bool) {
        if notify && self.sessions.contains_key(&sid) {
            let end = reason.len().min(MAX_REASON);
            let mut cut = end;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            let _ = self.send_portal(sid, T_CLOSE, &reason.as_bytes()[..cut]);
        }
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.keys.remove(&s.key);
        if s.key.2.is_some() {
            // An outlet's session: what its inlet still sends is dropped from now on.
            if let Some(o) = self
                .outlet_names
                .get(&s.key.1)
                .and_then(|oid| self.outlets.get_mut(oid))
            {
                if o.ended_set.insert(s.key.clone()) {
                    o.ended.push_back(s.key.clone());
                    if o.ended.len() > ENDED_MEMORY {
                        if let Some(old) = o.ended.pop_front() {
                            o.ended_set.remove(&old);
                        }
                    }
                }
            }
        }
        if let Some(owner) = s.owner {
            if let Some(i) = self.inlets.get_mut(&owner) {
                i.sessions.retain(|&x| x != sid);
            } else if let Some(o) = self.outlets.get_mut(&owner) {
                o.sessions.retain(|&x| x != sid);
            }
        }
        if let Some(ch) = self.channels.get_mut(&s.channel) {
            ch.sessions.retain(|&x| x != sid);
        }
        if let Some(mut sock) = s.sock.take() {
            let _ = self.registry.deregister(&mut sock);
            if abort {
                reset(&sock);
            }
        }
        self.push(Event::SessionClosed {
            session: sid,
            reason: reason.to_string(),
            sent: s.sent,
            received: s.received,
        });
    }

    // --- forwarding ---------------------------------------------------------------------------

    /// A message from `link` for channel `cid` (to its encryptor, or to a relay forwarder
    /// into it): sealed into the channel here, to `prefix` + the rest of its onward route,
    /// with the link pushed onto its return route. False: Python handles it (it fragments
    /// what is too large, and reports what cannot go on).
    fn seal_forward(
        &mut self,
        link: u64,
        cid: u64,
        prefix: &[(u16, Vec<u8>)],
        m: &route::RoutedMessage<'_>,
    ) -> bool {
        let Some(l) = self.links.get(&link) else {
            return false;
        };
        let onward: Vec<route::Address<'_>> = prefix
            .iter()
            .map(|(t, v)| route::Address {
                transport: *t,
                value: v,
            })
            .chain(m.onward[1..].iter().copied())
            .collect();
        let mut ret = Vec::with_capacity(m.return_route.len() + 1);
        ret.push(route::Address {
            transport: LOCAL,
            value: &l.name,
        });
        ret.extend_from_slice(&m.return_route);
        let Ok(inner) = route::encode(&onward, &ret, m.payload) else {
            return false;
        };
        let Some(out) = self.channel_link(cid).and_then(|o| self.links.get(&o)) else {
            return false;
        };
        // Too large (Python fragments it), or the way on is congested: Python waits for it to
        // drain, and this link stops being read while Python's queue is full (back-pressure).
        if inner.len() + FORWARD_MARGIN > out.opts.max_frame_len as usize
            || out.out_bytes > HIGH_WATER
        {
            return false;
        }
        if let Some(ch) = self.channels.get_mut(&cid) {
            ch.last_activity = Instant::now();
        }
        self.send_sealed(cid, &[&inner], 0).is_ok()
    }

    /// An inner message of channel `cid` addressed to link `out`: sent on it, the channel
    /// pushed onto its return route (as Python routes it).
    fn deliver_to_link(&mut self, cid: u64, out: u64, m: &route::RoutedMessage<'_>) -> bool {
        let Some(ch) = self.channels.get(&cid) else {
            return false;
        };
        let Some(l) = self.links.get(&out) else {
            return false;
        };
        if l.failed.is_some() || l.out_bytes > HIGH_WATER {
            return false; // Python waits for the link to drain (back-pressure)
        }
        let mut ret = Vec::with_capacity(m.return_route.len() + 1);
        ret.push(route::Address {
            transport: LOCAL,
            value: &ch.address,
        });
        ret.extend_from_slice(&m.return_route);
        let Ok(len) = route::encoded_len(&m.onward[1..], &ret, m.payload.len()) else {
            return false;
        };
        if len > l.opts.max_frame_len as usize {
            return false;
        }
        let Ok(header) = frame::header(len) else {
            return false;
        };
        let mut buf = vec![0u8; 4 + len];
        buf[..4].copy_from_slice(&header);
        if route::encode_to_slice(&m.onward[1..], &ret, m.payload, &mut buf[4..]).is_err() {
            return false;
        }
        self.link_send(out, buf);
        true
    }

    // --- inlets and outlets ------------------------------------------------------------------

    fn accept(&mut self, iid: u64) {
        loop {
            let Some(inlet) = self.inlets.get_mut(&iid) else {
                return;
            };
            let sock = match inlet.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if out_of_descriptors(&e) => {
                    // Refuse a waiting connection (reset) with the descriptor kept in reserve,
                    // so it does not wait in the backlog with no new readiness to retry it.
                    // (accept says EMFILE even with nothing waiting: then stop here.)
                    if self.spare.take().is_none() {
                        return;
                    }
                    let refused = match self.inlets.get_mut(&iid) {
                        Some(inlet) => inlet.listener.accept().ok(),
                        None => None,
                    };
                    self.spare = spare_descriptor();
                    match refused {
                        Some((sock, _)) => {
                            reset(&sock);
                            continue;
                        }
                        None => return,
                    }
                }
                Err(_) => return,
            };
            let binding = inlet.binding.clone();
            let full = inlet.sessions.len() >= inlet.max_sessions;
            let (prefix, window) = (inlet.prefix.clone(), inlet.window);
            let usable = binding
                .as_ref()
                .filter(|_| !full)
                .filter(|(c, _)| {
                    let link = self.channels.get(c).and_then(|ch| ch.link);
                    matches!(link.and_then(|l| self.links.get(&l)), Some(l) if l.failed.is_none())
                })
                .cloned();
            let Some((cid, onward)) = usable else {
                let std_sock: std::net::TcpStream = mio_into_std(sock);
                let _ = std_sock.set_nonblocking(false);
                self.push(Event::InletAccepted {
                    inlet: iid,
                    fd: OwnedFd::from(std_sock),
                });
                continue;
            };
            let sid = self.next_id;
            let mut address = prefix;
            address.extend_from_slice(sid.to_string().as_bytes());
            let header = session_header(&onward, &address);
            let std_sock = mio_into_std(sock);
            let spec = SessionSpec {
                channel: cid,
                sock: Some(OwnedFd::from(std_sock)),
                header,
                address: address.clone(),
                match_return: None,
                window,
                open: true,
                sync: SyncMode::Synced,
                connect_timeout: Duration::ZERO,
                connect_prefix: String::new(),
            };
            // On failure the socket was dropped: the client sees the connection close.
            if let Ok(sid) = self.new_session(spec) {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.owner = Some(iid);
                    if let Some(i) = self.inlets.get_mut(&iid) {
                        i.sessions.push(sid);
                    }
                }
                self.push(Event::InletSession {
                    inlet: iid,
                    session: sid,
                    channel: cid,
                    address,
                });
            }
        }
    }

    /// An OPEN to outlet `oid` through channel `cid`: a session here if the channel is
    /// authorized (true), else Python decides (false).
    fn outlet_open(&mut self, oid: u64, cid: u64, ret: Vec<u8>) -> bool {
        let Some(o) = self.outlets.get(&oid) else {
            return false;
        };
        let Some(target) = o.target else {
            return false;
        };
        let key = (cid, o.name.clone(), Some(ret.clone()));
        if o.ended_set.contains(&key) {
            return true; // a late OPEN of a session that ended: dropped, quietly
        }
        if !o.allowed.contains(&cid) || o.sessions.len() >= o.max_sessions {
            return false;
        }
        let sid = self.next_id;
        let mut address = b"outlet#e".to_vec();
        address.extend_from_slice(sid.to_string().as_bytes());
        // The session answers the inlet session at the head of the return route.
        let header = session_header(&ret, &address);
        let spec = SessionSpec {
            channel: cid,
            sock: None,
            header,
            address: o.name.clone(),
            match_return: Some(ret.clone()),
            window: o.window,
            open: false,
            sync: SyncMode::Synced,
            connect_timeout: o.connect_timeout,
            connect_prefix: o.connect_prefix.clone(),
        };
        let Ok(sid) = self.new_session(spec) else {
            return false;
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.owner = Some(oid);
        }
        if let Some(o) = self.outlets.get_mut(&oid) {
            o.sessions.push(sid);
        }
        self.push(Event::OutletSession {
            outlet: oid,
            session: sid,
            channel: cid,
            return_route: ret,
        });
        self.connect(sid, target);
        true
    }

    // --- timers -----------------------------------------------------------------------------

    fn tick(&mut self) {
        let now = Instant::now();
        let mut failures = Vec::new();
        let mut keepalives = Vec::new();
        for (&id, l) in &self.links {
            if l.failed.is_some() {
                continue;
            }
            if l.out.is_empty() && now.duration_since(l.last_tx) >= l.opts.keepalive {
                keepalives.push(id);
            }
            if let Some(stalled) = l.tx_stalled.filter(|_| !l.out.is_empty()) {
                if now.duration_since(stalled) >= l.opts.drain_timeout {
                    failures.push((
                        id,
                        format!(
                            "the peer read nothing for {} s: presumed stuck",
                            secs(l.opts.drain_timeout)
                        ),
                    ));
                    continue;
                }
            }
            if l.read_blocked {
                continue; // waiting on Python is neither peer silence nor a slow frame
            }
            if let Some(started) = l.frame_started {
                if now.duration_since(started) >= l.opts.frame_timeout {
                    failures.push((
                        id,
                        format!(
                            "a frame was not completed within {} s (slow peer)",
                            secs(l.opts.frame_timeout)
                        ),
                    ));
                    continue;
                }
            }
            if now.duration_since(l.last_rx) >= l.opts.dead_after {
                failures.push((
                    id,
                    format!(
                        "peer silent for {} s: presumed dead",
                        secs(l.opts.dead_after)
                    ),
                ));
            }
        }
        for (id, reason) in failures {
            self.fail_link(id, reason);
        }
        for id in keepalives {
            self.link_send(id, vec![0, 0, 0, 0]);
            if let Some(l) = self.links.get_mut(&id) {
                l.last_tx = now;
            }
        }
        let mut refusals: Vec<(u64, u64, String)> = Vec::new();
        for (&id, c) in &mut self.channels {
            let burst = std::mem::take(&mut c.refusing);
            if burst && c.refused > 0 {
                let n = std::mem::take(&mut c.refused);
                refusals.push((id, n, std::mem::take(&mut c.refused_reason)));
            }
        }
        for (channel, count, reason) in refusals {
            self.push(Event::Refused {
                channel,
                count,
                reason,
            });
        }
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.connecting.is_some_and(|d| now >= d))
            .map(|(&id, _)| id)
            .collect();
        for sid in expired {
            let prefix = self
                .sessions
                .get(&sid)
                .map(|s| s.connect_prefix.clone())
                .unwrap_or_default();
            self.finish(sid, &format!("{prefix}: timed out"), true, true);
        }
    }
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

/// `10` for 10 s, `0.5` for 500 ms (as Python's `%g`).
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}
