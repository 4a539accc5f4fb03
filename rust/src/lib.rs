//! tether's core: the hot, security-critical path of the tether package.
//!
//! Everything but `engine` is sans-IO: functions and state machines take bytes (and, where
//! needed, randomness, the handshake's ephemeral key or the time `now`) and return bytes, actions
//! or typed errors. No sockets, no clocks. The data plane's rules live here once, and two drivers
//! run them: `engine` (a Rust thread per node) and the Python package (through `py`).
//!
//! | module      | owns |
//! |-------------|------|
//! | [`frame`]   | length-prefixed framing of a byte stream, with the size limit checked before allocation |
//! | [`route`]   | the routed-message encoding (version, onward route, return route, payload) |
//! | [`aead`]    | AES-256-GCM and ChaCha20-Poly1305 seal/open (from `ring`), Noise nonces and `REKEY` |
//! | [`noise`]   | the Noise XX handshake (from `snow`) and the transport cipher states it splits into |
//! | [`replay`]  | the sliding anti-replay bitmap window |
//! | [`channel`] | explicit-nonce transport messages for secure channels: replay window and rekey by count |
//! | [`portal`]  | portal session messages (OPEN, DATA, EOF, CLOSE, CREDIT, error reports): allocation-free decode and encode; [`portal::Session`], a session's state machine (credit, EOF, close → actions) |
//! | [`reassembly`] | a secure channel's fragment reassembly, and which failures count as refused |
//! | [`link`]    | a link's keepalive, dead-peer, slow-frame and stuck-peer timers, given `now` |
//! | [`relay`]   | a relay's forwarding rule: where a message that reaches a forwarder goes next |
//! | [`nats`]    | the NATS client protocol, sans-IO: the operations a client sends, and a streaming decoder of what a server sends (lengths checked before allocation) |
//! | [`records`] | sealed records for brokers: the record format, a producer's sealer and a consumer's opener (replay, reorder and gap tracking) |
//! | `engine`    | the Rust driver of the data plane (feature `engine`): the one module that does I/O — a thread per node owning its TCP links and portal sessions |
//! | `py`        | the pyo3 bindings (feature `python`), typed events and the state machines' Python faces; nothing else touches Python |
//!
//! The house rules (see `docs/architecture.md`): a rejected input changes no state; an object
//! that cannot recover says so (`Error::Broken`) for good; errors carry no secret.

pub mod aead;
pub mod channel;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
pub mod frame;
pub mod link;
pub mod nats;
pub mod noise;
pub mod portal;
pub mod reassembly;
pub mod records;
pub mod relay;
pub mod replay;
pub mod route;

#[cfg(feature = "python")]
mod py;

pub use error::Error;
