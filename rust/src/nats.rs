//! The NATS client protocol, sans-IO: what a client sends (`CONNECT`, `PUB`, `SUB`, `UNSUB`,
//! `PING`, `PONG`) and a streaming decoder of what a server sends (`INFO`, `MSG`, `HMSG`,
//! `PING`, `PONG`, `+OK`, `-ERR`), after the protocol as the NATS documentation describes it
//! ("Client Protocol": <https://docs.nats.io/reference/reference-protocols/nats-protocol>).
//!
//! This is the wire layer of a NATS link (a node that reaches others through a NATS cluster):
//! a routed tether frame travels as one message's payload, so the cluster carries ciphertext
//! only. Nothing here knows tether's subjects or who may use them.
//!
//! Every length a server announces is checked before a byte is reserved for it: a control line
//! longer than `max_line` or a payload longer than `max_payload` breaks the decoder (the stream
//! cannot be resynchronised), and the link closes with the reason.

use std::fmt;

/// The longest control line the decoder accepts by default (the server's own default limit).
pub const MAX_CONTROL_LINE: usize = 4096;
/// The longest subject (or reply subject) this client sends or accepts.
pub const MAX_SUBJECT: usize = 255;

/// What a server sent.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`: the server's description (its JSON is the caller's to read).
    Info(String),
    /// `MSG` or `HMSG`: a message for subscription `sid` (headers kept whole, as sent).
    Msg {
        subject: String,
        sid: u64,
        reply: Option<String>,
        headers: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR 'message'`: the message without its quotes.
    Err(String),
}

impl fmt::Debug for ServerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerOp::Info(j) => write!(f, "Info({} bytes)", j.len()),
            ServerOp::Msg {
                subject,
                sid,
                reply,
                headers,
                payload,
            } => write!(
                f,
                "Msg {{ subject: {subject:?}, sid: {sid}, reply: {reply:?}, headers: {:?}, \
                 payload: {} bytes }}",
                headers.as_ref().map(Vec::len),
                payload.len()
            ),
            ServerOp::Ping => f.write_str("Ping"),
            ServerOp::Pong => f.write_str("Pong"),
            ServerOp::Ok => f.write_str("Ok"),
            ServerOp::Err(e) => write!(f, "Err({e:?})"),
        }
    }
}

/// Why the server's stream, or an operation to send, was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsError {
    /// The server broke the protocol (the decoder is broken from then on).
    Protocol(String),
    /// A subject this client was asked to send is not a valid NATS subject.
    BadSubject(String),
    /// A payload longer than the server's `max_payload`.
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsError::Protocol(what) => write!(f, "the NATS server broke the protocol: {what}"),
            NatsError::BadSubject(why) => write!(f, "not a NATS subject: {why}"),
            NatsError::TooLarge { len, max } => write!(
                f,
                "a NATS message of {len} bytes is over the server's max_payload of {max} bytes"
            ),
        }
    }
}

impl std::error::Error for NatsError {}

/// Check a subject this client sends: 1 to [`MAX_SUBJECT`] printable ASCII bytes, no
/// whitespace, no empty token; wildcards (`*`, `>`) only where `wildcards` allows them (a
/// subscription), and then only as whole tokens, `>` last.
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), NatsError> {
    let bad = |why: &str| Err(NatsError::BadSubject(format!("{subject:?}: {why}")));
    if subject.is_empty() || subject.len() > MAX_SUBJECT {
        return bad("a subject is 1 to 255 bytes");
    }
    if !subject.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("printable ASCII only, no spaces");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return bad("an empty token (two dots, or a dot at an end)");
        }
        let wild = *t == "*" || *t == ">";
        if (t.contains('*') || t.contains('>')) && !wild {
            return bad("'*' and '>' are whole tokens");
        }
        if wild && !wildcards {
            return bad("no wildcards in a subject to publish to");
        }
        if *t == ">" && i + 1 != tokens.len() {
            return bad("'>' is the last token");
        }
    }
    Ok(())
}

/// Append `CONNECT {json}` (the caller builds the JSON: credentials, `verbose`, `pedantic`,
/// `headers`, `no_responders`…).
pub fn connect(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Append `PUB subject [reply] len`, the payload and its end. `max_payload` is the server's.
pub fn publish(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    payload: &[u8],
    max_payload: usize,
) -> Result<(), NatsError> {
    check_subject(subject, false)?;
    if let Some(r) = reply {
        check_subject(r, false)?;
    }
    if payload.len() > max_payload {
        return Err(NatsError::TooLarge {
            len: payload.len(),
            max: max_payload,
        });
    }
    out.reserve(subject.len() + reply.map_or(0, str::len) + payload.len() + 32);
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(r) = reply {
        out.push(b' ');
        out.extend_from_slice(r.as_bytes());
    }
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Append `SUB subject [queue] sid`.
pub fn subscribe(
    out: &mut Vec<u8>,
    subject: &str,
    queue: Option<&str>,
    sid: u64,
) -> Result<(), NatsError> {
    check_subject(subject, true)?;
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(q) = queue {
        check_subject(q, false)?;
        out.push(b' ');
        out.extend_from_slice(q.as_bytes());
    }
    out.push(b' ');
    out.extend_from_slice(sid.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Append `UNSUB sid`.
pub fn unsubscribe(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(b"UNSUB ");
    out.extend_from_slice(sid.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// A streaming decoder of what a server sends: feed it bytes in chunks of any size, take whole
/// operations out in order.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded.
    at: usize,
    max_line: usize,
    max_payload: usize,
    broken: Option<NatsError>,
}

/// A message's control line, parsed; its bytes come after it.
struct MsgLine {
    subject: String,
    sid: u64,
    reply: Option<String>,
    header_len: Option<usize>,
    total_len: usize,
}

fn protocol(what: impl Into<String>) -> NatsError {
    NatsError::Protocol(what.into())
}

fn number(token: &[u8], what: &str) -> Result<usize, NatsError> {
    if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
        return Err(protocol(format!("{what} is not a number")));
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("{what} is not a number")))
}

fn subject_token(token: &[u8], what: &str) -> Result<String, NatsError> {
    let s = std::str::from_utf8(token).map_err(|_| protocol(format!("{what} is not ASCII")))?;
    check_subject(s, false).map_err(|_| protocol(format!("{what} is not a subject")))?;
    Ok(s.to_owned())
}

impl Decoder {
    /// A decoder for a server whose `max_payload` is `max_payload` (from its `INFO`; until
    /// then, the NATS default of 1 MiB is a safe bound).
    pub fn new(max_payload: usize) -> Self {
        Self {
            buf: Vec::new(),
            at: 0,
            max_line: MAX_CONTROL_LINE,
            max_payload,
            broken: None,
        }
    }

    /// The server's `max_payload` changed (a new `INFO`).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Bytes fed and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Add bytes from the server.
    pub fn feed(&mut self, data: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 && self.at * 2 > self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole operation, `None` until more bytes come, or why the stream is refused
    /// (for good: every later call gives the same error).
    pub fn next_op(&mut self) -> Result<Option<ServerOp>, NatsError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        match self.decode() {
            Err(e) => {
                self.broken = Some(e.clone());
                self.buf = Vec::new();
                self.at = 0;
                Err(e)
            }
            ok => ok,
        }
    }

    fn decode(&mut self) -> Result<Option<ServerOp>, NatsError> {
        let rest = &self.buf[self.at..];
        let window = &rest[..rest.len().min(self.max_line + 2)];
        let Some(eol) = window.windows(2).position(|w| w == b"\r\n") else {
            if rest.len() > self.max_line + 1 {
                return Err(protocol(format!(
                    "a control line longer than {} bytes",
                    self.max_line
                )));
            }
            return Ok(None);
        };
        let line = &rest[..eol];
        let (op, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[..0]),
        };
        let op = op.to_ascii_uppercase();
        let simple = |this: &mut Self, op: ServerOp| {
            this.at += eol + 2;
            Ok(Some(op))
        };
        match op.as_slice() {
            b"PING" => simple(self, ServerOp::Ping),
            b"PONG" => simple(self, ServerOp::Pong),
            b"+OK" => simple(self, ServerOp::Ok),
            b"-ERR" => {
                let text = String::from_utf8_lossy(args)
                    .trim()
                    .trim_matches('\'')
                    .to_owned();
                simple(self, ServerOp::Err(text))
            }
            b"INFO" => {
                let json = std::str::from_utf8(args)
                    .map_err(|_| protocol("INFO is not UTF-8"))?
                    .trim()
                    .to_owned();
                simple(self, ServerOp::Info(json))
            }
            b"MSG" | b"HMSG" => {
                let m = self.msg_line(args, op.as_slice() == b"HMSG")?;
                let start = self.at + eol + 2;
                let need = m.total_len + 2;
                if self.buf.len() - start < need {
                    return Ok(None);
                }
                let body = &self.buf[start..start + m.total_len];
                if &self.buf[start + m.total_len..start + need] != b"\r\n" {
                    return Err(protocol("a message does not end where its length says"));
                }
                let (headers, payload) = match m.header_len {
                    Some(h) => (Some(body[..h].to_vec()), body[h..].to_vec()),
                    None => (None, body.to_vec()),
                };
                self.at = start + need;
                Ok(Some(ServerOp::Msg {
                    subject: m.subject,
                    sid: m.sid,
                    reply: m.reply,
                    headers,
                    payload,
                }))
            }
            _ => Err(protocol(format!(
                "unknown operation {:?}",
                String::from_utf8_lossy(&op[..op.len().min(16)])
            ))),
        }
    }

    fn msg_line(&self, args: &[u8], with_headers: bool) -> Result<MsgLine, NatsError> {
        let tokens: Vec<&[u8]> = args
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|t| !t.is_empty())
            .collect();
        let counts = usize::from(with_headers) + 1;
        let reply = match tokens.len().checked_sub(counts) {
            Some(2) => None,
            Some(3) => Some(subject_token(tokens[2], "a reply subject")?),
            _ => return Err(protocol("a message line has the wrong number of fields")),
        };
        let subject = subject_token(tokens[0], "a message's subject")?;
        let sid = number(tokens[1], "a subscription id")?;
        let lens = &tokens[tokens.len() - counts..];
        let total_len = number(lens[counts - 1], "a message length")?;
        let header_len = if with_headers {
            let h = number(lens[0], "a header length")?;
            if h > total_len {
                return Err(protocol("a header length over the message's"));
            }
            Some(h)
        } else {
            None
        };
        if total_len > self.max_payload.saturating_add(header_len.unwrap_or(0)) {
            return Err(protocol(format!(
                "a message of {total_len} bytes, over max_payload ({} bytes)",
                self.max_payload
            )));
        }
        Ok(MsgLine {
            subject,
            sid: u64::try_from(sid).unwrap_or(u64::MAX),
            reply,
            header_len,
            total_len,
        })
    }
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
