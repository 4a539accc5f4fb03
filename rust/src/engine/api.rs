//! The engine's handle: what Python (through `py/engine.rs`) asks of the data plane. Each call
//! takes the state's lock, does its work, settles what it deferred, and wakes the thread.

use super::{
    lock, reset, run, spare_descriptor, token, Backpressure, Channel, Engine, Event, Forward,
    Inlet, Link, LinkOptions, Outlet, OwnedRoute, SendStatus, SessionSpec, Shared, SharedCipher,
    State, Stats, HIGH_WATER, READ_SIZE, UP_LIMIT, UP_TOTAL_LIMIT, WAKER,
};
use crate::frame::FrameDecoder;
use crate::link::LinkTimers;
use crate::reassembly::Reassembler;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Poll, Waker};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
            plain_buf: Vec::new(),
            actions: Vec::new(),
            epoch: Instant::now(),
            stopping: false,
            fault: None,
            spare: spare_descriptor(),
            pressure: Backpressure::default(),
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
        let now = st.epoch.elapsed();
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
                timers: LinkTimers::new(opts.timeouts(), now),
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
                let st = &mut *st;
                match st.links.get_mut(&link) {
                    Some(l) if l.failed.is_none() => {
                        if l.out_bytes > HIGH_WATER {
                            if !l.congested {
                                st.pressure.link_congested += 1;
                            }
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
            let now = st.epoch.elapsed();
            let st = &mut *st;
            let blocked = std::mem::take(&mut st.blocked);
            for id in blocked {
                let Some(l) = st.links.get_mut(&id) else {
                    continue;
                };
                if l.up < UP_LIMIT / 2 {
                    l.read_blocked = false;
                    // Time blocked on Python is neither peer silence nor a slow frame.
                    l.timers.delivering(false, now);
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
                reassembler: Reassembler::new(),
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
            let held: usize = s.held.iter().map(Vec::len).sum();
            let held = s.flow.queued_bytes() + held;
            (s.flow.sent(), s.flow.received(), held as u64)
        })
    }

    /// Take over an inlet's listening socket; returns the inlet's id. Session addresses are
    /// `prefix` + the session id.
    pub fn add_inlet(
        &self,
        fd: OwnedFd,
        prefix: Vec<u8>,
        window: u64,
        resume_timeout: Duration,
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
                resume_timeout,
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
        resume_timeout: Duration,
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
                resume_timeout,
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
                let (forwarded, forwarded_bytes) = st
                    .forwards
                    .get(&name)
                    .map_or((0, 0), |f| (f.forwarded, f.forwarded_bytes));
                st.forwards.insert(
                    name,
                    Forward {
                        channel,
                        route,
                        forwarded,
                        forwarded_bytes,
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

    /// `(messages, payload bytes)` forwarded at `name` by the engine.
    pub fn forwarded(&self, name: &[u8]) -> (u64, u64) {
        self.state()
            .forwards
            .get(name)
            .map_or((0, 0), |f| (f.forwarded, f.forwarded_bytes))
    }

    /// The engine's counters (back-pressure applied, by kind).
    pub fn stats(&self) -> Stats {
        Stats {
            backpressure: self.state().pressure,
        }
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
