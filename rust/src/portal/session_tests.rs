//! The session state machine, with no socket: its rules one by one, then property tests against
//! any sequence of inputs, and of two sessions joined back to back by a path that loses,
//! repeats and fails.

use super::*;
use crate::portal::{
    data_header, ACK_PROBE, ACK_RESEND, KIND_DATA, KIND_ERROR, MAX_REASON, T_ACK, T_CLOSE, T_OPEN,
};
use proptest::prelude::*;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![KIND_DATA, t];
    p.extend_from_slice(body);
    p
}

fn data(seq: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = data_header(seq).to_vec();
    p.extend_from_slice(bytes);
    p
}

fn eof(seq: u64) -> Vec<u8> {
    Control::Eof(seq).encode()
}

fn ack(next: u64, consumed: u64, flags: u8) -> Vec<u8> {
    Control::Ack {
        next,
        consumed,
        flags,
    }
    .encode()
}

fn sent_ack(next: u64, consumed: u64, flags: u8) -> Action {
    Action::Send(Control::Ack {
        next,
        consumed,
        flags,
    })
}

/// What a session sends on [`Action::Resend`]: each message it keeps, in order.
fn resent(s: &Session) -> Vec<Vec<u8>> {
    s.retained()
        .map(|(n, bytes)| bytes.map_or_else(|| eof(n), |b| data(n, b)))
        .collect()
}

fn closed(reason: &str, abort: bool) -> Action {
    Action::Closed {
        reason: reason.into(),
        abort,
    }
}

/// An outlet-side session (its peer is there) with a 30 s resume timeout.
fn session(window: u64) -> Session {
    Session::new(window, 30.0, true)
}

#[test]
fn a_reader_out_of_credit_waits_for_credit() {
    let mut s = session(2048);
    let mut out = Vec::new();
    assert_eq!(s.read_allowance(), MAX_DATA);
    assert_eq!(s.on_read(&[1; 2000], 0.0), 0);
    assert_eq!(s.read_allowance(), MAX_DATA); // 48 units left: one more read may overdraw
    assert_eq!(s.on_read(&[2; 100], 0.0), 1); // costs MIN_CHARGE
    assert_eq!(s.credit(), 2048 - 2000 - 512);
    assert_eq!(s.read_allowance(), 0);
    assert!(s.wants_read());
    assert_eq!(s.on_peer(&ack(0, 100, 0), 0.0, &mut out), None);
    assert!(out.is_empty(), "still overdrawn: no resume");
    assert_eq!(s.on_peer(&ack(1, 2000, 0), 0.0, &mut out), None);
    assert_eq!(out, [Action::ResumeRead]);
    assert_eq!(s.read_allowance(), MAX_DATA);
    assert_eq!(s.sent(), 2100);
    assert_eq!(s.retained_bytes(), 100, "DATA 0 acknowledged, DATA 1 kept");
}

#[test]
fn data_is_acknowledged_by_quarter_window_and_after_a_short_delay() {
    let mut s = session(4096); // grant 1024
    let mut out = Vec::new();
    let p = data(0, &[7; 600]);
    let body = s.on_peer(&p, 1.0, &mut out).unwrap();
    assert_eq!(body, &[7; 600][..]);
    s.data(body, body.len(), &mut out);
    assert!(out.is_empty(), "600 < the 1024 grant");
    assert_eq!(s.deadline(), Some(1.0 + ACK_DELAY));
    s.on_tick(1.0 + ACK_DELAY / 2.0, &mut out);
    assert!(out.is_empty(), "not yet");
    s.on_tick(1.0 + ACK_DELAY, &mut out);
    assert_eq!(out, [sent_ack(1, 600, 0)]);
    assert_eq!(s.deadline(), None);
    out.clear();
    let p = data(1, b"x");
    let body = s.on_peer(&p, 2.0, &mut out).unwrap();
    s.data(body, 1, &mut out);
    assert!(
        out.is_empty(),
        "MIN_CHARGE since the last ACK: within the grant"
    );
    let p = data(2, &[8; 600]);
    let body = s.on_peer(&p, 2.0, &mut out).unwrap();
    s.data(body, body.len(), &mut out);
    assert_eq!(out, [sent_ack(3, 1712, 0)]); // 1112 since the last ACK: past the grant
    assert_eq!(s.received(), 1201);
    out.clear();
    s.on_tick(3.0, &mut out);
    assert!(out.is_empty(), "nothing new to acknowledge");
}

#[test]
fn what_the_socket_does_not_take_is_queued_and_written_later() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    let p = data(0, b"hello world");
    let body = s.on_peer(&p, 0.0, &mut out).unwrap();
    s.data(body, 6, &mut out);
    assert_eq!(out, [Action::Write]);
    assert!(!s.queue_empty());
    assert_eq!(s.pending(), Some(&b"world"[..]));
    assert_eq!(s.queued_bytes(), 5);
    s.wrote(2);
    assert_eq!(s.pending(), Some(&b"rld"[..]));
    s.wrote(3);
    assert_eq!(s.pending(), None);
    assert_eq!(s.queued_bytes(), 0);
    out.clear();
    s.flushed(&mut out);
    assert!(out.is_empty());
}

#[test]
fn half_close_both_ways_ends_in_order_once_both_eofs_are_acknowledged() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    s.on_read_eof(0.0, &mut out);
    assert_eq!(out, [Action::Send(Control::Eof(0))]);
    assert_eq!(s.read_allowance(), 0);
    out.clear();
    s.on_peer(&eof(0), 0.0, &mut out);
    assert_eq!(out, [sent_ack(1, 0, 0), Action::Write]);
    out.clear();
    s.flushed(&mut out);
    assert_eq!(out, [Action::ShutWrite], "our EOF is not acknowledged yet");
    out.clear();
    // The peer has our EOF (and had our ACK of its own): the end.
    s.on_peer(&ack(1, 0, 0), 0.0, &mut out);
    assert_eq!(out, [closed("", false)]);
    assert!(s.is_closed());
    out.clear();
    s.on_peer(&data(1, b"late"), 0.0, &mut out);
    s.flushed(&mut out);
    s.on_tick(100.0, &mut out);
    assert!(out.is_empty(), "nothing after the end");
}

#[test]
fn when_the_last_ack_is_lost_the_waiting_side_ends_in_order_at_the_resume_timeout() {
    let mut s = Session::new(1 << 20, 30.0, true);
    let mut out = Vec::new();
    s.on_peer(&eof(0), 0.0, &mut out); // the peer's end came, and was acknowledged
    s.flushed(&mut out);
    s.on_read_eof(1.0, &mut out);
    out.clear();
    // The ACK of our EOF never comes (the peer ended: its last ACK was lost): EOF goes again.
    let mut now = 1.0;
    while !s.is_closed() {
        now = s.deadline().unwrap();
        s.on_tick(now, &mut out);
    }
    assert!((31.0..36.0).contains(&now), "ended at {now}");
    assert_eq!(out.last(), Some(&closed("", false)), "{out:?}");
    assert!(out
        .iter()
        .all(|a| matches!(a, Action::Resend | Action::Closed { .. })));
}

#[test]
fn a_sender_out_of_credit_asks_for_the_ack_it_may_have_missed() {
    let mut s = session(1024);
    let mut out = Vec::new();
    s.on_read(&[0; 1024], 0.0);
    assert_eq!(s.read_allowance(), 0);
    s.on_peer(&ack(1, 0, 0), 0.5, &mut out); // it has the DATA, has not written it
    assert!(out.is_empty());
    assert_eq!(s.deadline(), Some(0.5 + RTO_MIN));
    s.on_tick(0.5 + RTO_MIN, &mut out);
    assert_eq!(out, [sent_ack(0, 0, ACK_PROBE)]);
    out.clear();
    // The peer answers a probe with its ACK; the credit in it resumes the reader.
    let mut peer = session(1024);
    peer.on_peer(&ack(0, 0, ACK_PROBE), 2.0, &mut out);
    assert_eq!(out, [sent_ack(0, 0, 0)]);
    out.clear();
    s.on_peer(&ack(1, 1024, 0), 2.0, &mut out);
    assert_eq!(out, [Action::ResumeRead]);
    assert_eq!(s.deadline(), None);
}

#[test]
fn the_write_half_is_shut_only_after_the_queue() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    let p = data(0, b"abc");
    let body = s.on_peer(&p, 0.0, &mut out).unwrap();
    s.data(body, 0, &mut out);
    s.on_peer(&eof(1), 0.0, &mut out);
    out.clear();
    s.flushed(&mut out);
    assert!(out.is_empty(), "abc still queued");
    s.wrote(3);
    s.flushed(&mut out);
    assert_eq!(out, [Action::ShutWrite]);
}

#[test]
fn duplicates_are_dropped_and_answered_once_with_what_arrived() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    assert!(s.on_peer(&data(0, b"a"), 0.0, &mut out).is_some());
    assert!(s.on_peer(&data(1, b"b"), 0.0, &mut out).is_some());
    assert!(out.is_empty());
    assert_eq!(s.on_peer(&data(0, b"a"), 0.0, &mut out), None);
    assert_eq!(out, [sent_ack(2, 0, 0)]);
    out.clear();
    assert_eq!(s.on_peer(&data(1, b"b"), 0.0, &mut out), None);
    assert!(out.is_empty(), "one answer per burst of duplicates");
    assert_eq!(s.on_peer(&data(1, b"b"), RESEND_GAP, &mut out), None);
    assert_eq!(out, [sent_ack(2, 0, 0)]);
    assert_eq!(s.received(), 2);
}

#[test]
fn a_gap_is_dropped_and_a_resend_asked_for_once() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    assert!(s.on_peer(&data(0, b"a"), 0.0, &mut out).is_some());
    assert_eq!(s.on_peer(&data(2, b"c"), 0.0, &mut out), None);
    assert_eq!(s.on_peer(&data(3, b"d"), 0.0, &mut out), None);
    assert_eq!(out, [sent_ack(1, 0, ACK_RESEND)]);
    out.clear();
    assert_eq!(s.on_peer(&data(1, b"b"), 0.0, &mut out), Some(&b"b"[..]));
    assert_eq!(s.on_peer(&data(2, b"c"), 0.0, &mut out), Some(&b"c"[..]));
    assert_eq!(s.on_peer(&data(4, b"e"), 0.0, &mut out), None);
    assert_eq!(
        out,
        [sent_ack(3, 0, ACK_RESEND)],
        "a new gap is asked for again"
    );
}

#[test]
fn the_sender_resends_what_is_not_acknowledged_when_asked_or_in_time() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    s.on_read(b"ab", 10.0);
    s.on_read(b"cd", 10.0);
    let all = |s: &Session| {
        s.retained()
            .map(|(n, b)| (n, b.map(<[u8]>::to_vec)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        all(&s),
        [(0, Some(b"ab".to_vec())), (1, Some(b"cd".to_vec()))]
    );
    assert_eq!(s.deadline(), Some(10.0 + RTO_MIN));
    // The peer has DATA 0 and missed DATA 1: a resend at once.
    s.on_peer(&ack(1, 512, ACK_RESEND), 10.1, &mut out);
    assert_eq!(out, [Action::Resend]);
    assert_eq!(all(&s), [(1, Some(b"cd".to_vec()))]);
    out.clear();
    // Asked again for what that resend covers, soon after: it is on its way.
    s.on_peer(&ack(1, 512, ACK_RESEND), 10.1 + RESEND_GAP / 2.0, &mut out);
    s.on_peer(&ack(1, 512, ACK_RESEND), 10.1 + RESEND_GAP * 2.0, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // A gap in what was sent after it, reported within RESEND_GAP: resent when the gap passed.
    s.on_read(b"ef", 10.12);
    s.on_read_eof(10.12, &mut out);
    out.clear();
    s.on_peer(&ack(2, 1024, ACK_RESEND), 10.15, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.deadline(), Some(10.1 + RESEND_GAP));
    s.on_tick(10.1 + RESEND_GAP, &mut out);
    assert_eq!(out, [Action::Resend]);
    assert_eq!(all(&s), [(2, Some(b"ef".to_vec())), (3, None)]);
    out.clear();
    // No ACK: resent at the timeout, which doubles up to RTO_MAX.
    let mut t = 10.1 + RESEND_GAP + RTO_MIN;
    let mut rto = RTO_MIN;
    for _ in 0..4 {
        assert_eq!(s.deadline(), Some(t));
        s.on_tick(t - 0.01, &mut out);
        assert!(out.is_empty());
        s.on_tick(t, &mut out);
        assert_eq!(out, [Action::Resend]);
        out.clear();
        rto = (rto * 2.0).min(RTO_MAX);
        t += rto;
    }
    // Progress resets the timeout; everything acknowledged stops the timer.
    s.on_peer(&ack(3, 1536, 0), 20.0, &mut out);
    assert_eq!(s.deadline(), Some(20.0 + RTO_MIN));
    s.on_peer(&ack(4, 1536, 0), 20.5, &mut out);
    assert_eq!(s.deadline(), None);
    assert_eq!(s.retained_bytes(), 0);
    assert!(out.is_empty());
}

#[test]
fn a_failed_path_pauses_an_answered_session_and_ends_it_after_the_resume_timeout() {
    let mut s = Session::new(1 << 20, 30.0, false);
    let mut out = Vec::new();
    // Before the peer answered, a failed path ends the session at once.
    s.on_peer(&[KIND_ERROR, b'n', b'o'], 0.0, &mut out);
    assert_eq!(out, [closed("the path to the peer failed: no", true)]);

    let mut s = Session::new(1 << 20, 30.0, false);
    out.clear();
    s.on_peer(&msg(T_OPEN, b""), 0.0, &mut out); // the outlet's answer
    s.on_read(b"x", 1.0);
    s.on_peer(b"\x01server gone", 1.5, &mut out);
    assert!(out.is_empty(), "paused, not ended");
    assert_eq!(
        s.path_error(),
        Some("the path to the peer failed: server gone")
    );
    let mut now = 1.0;
    while !s.is_closed() {
        now = s.deadline().unwrap();
        s.on_tick(now, &mut out);
    }
    assert!((31.0..36.0).contains(&now), "gave up at {now}");
    let reason = format!(
        "the path to the peer failed: server gone (for {:.0} s: the session gave up resending)",
        now - 1.0
    );
    assert_eq!(out.last(), Some(&closed(&reason, true)), "{out:?}");
    assert!(out.iter().filter(|a| **a == Action::Resend).count() >= 7);
    assert_eq!(s.retained_bytes(), 0, "what it kept is freed");
}

#[test]
fn the_path_coming_back_clears_the_pause() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    s.on_read(b"x", 0.0);
    s.on_peer(b"\x01down", 0.5, &mut out);
    s.on_peer(&ack(1, 512, 0), 20.0, &mut out);
    assert_eq!(s.path_error(), None);
    s.on_read(b"y", 25.0);
    s.on_tick(40.0, &mut out);
    assert_eq!(
        out,
        [Action::Resend],
        "the wait counts from the last progress"
    );
}

#[test]
fn acknowledged_buffers_are_reused_for_reads_and_freed_when_idle() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    s.on_read(&[1; 1000], 0.0);
    s.on_read(&[2; 1000], 0.0);
    let first = s.retained().next().and_then(|(_, b)| b).unwrap().as_ptr();
    s.on_peer(&ack(1, 0, 0), 0.1, &mut out);
    s.on_read(&[3; 10], 0.2);
    let newest = s.retained().last().and_then(|(_, b)| b).unwrap();
    assert_eq!(newest, &[3; 10][..]);
    assert_eq!(newest.as_ptr(), first, "DATA 0's buffer, not a new one");
    s.on_peer(&ack(3, 0, 0), 0.3, &mut out);
    assert!(
        s.spare.is_empty(),
        "nothing in flight: no spare memory kept"
    );
}

#[test]
fn a_path_back_resends_at_once_and_asks_the_peer_to() {
    let mut s = session(1 << 20);
    let mut out = Vec::new();
    s.on_read(b"x", 0.0);
    s.on_peer(b"\x01down", 0.1, &mut out);
    s.on_tick(1.0, &mut out); // the first resend, lost too: the timeout doubles
    out.clear();
    s.path_restored(1.5, &mut out);
    assert_eq!(out, [Action::Resend, sent_ack(0, 0, ACK_RESEND)]);
    assert_eq!(s.path_error(), None);
    assert_eq!(
        s.deadline(),
        Some(1.5 + RTO_MIN),
        "the timeout is back to its first"
    );
    // Before the peer answered, there is nothing to resume.
    let mut fresh = Session::new(1 << 20, 30.0, false);
    out.clear();
    fresh.path_restored(0.0, &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_peer_that_overruns_its_window_is_refused() {
    let mut s = session(1000);
    let mut out = Vec::new();
    let big = vec![1; MAX_DATA];
    let p = data(0, &big);
    let body = s.on_peer(&p, 0.0, &mut out).unwrap();
    s.data(body, 0, &mut out); // window + charge(MAX_DATA) is the bound: not yet over
    assert_eq!(out, [Action::Write]);
    out.clear();
    let p = data(1, &big);
    let body = s.on_peer(&p, 0.0, &mut out).unwrap();
    s.data(body, 0, &mut out);
    let reason = "protocol error: the peer overran its flow-control window";
    assert_eq!(
        out,
        [
            Action::Send(Control::Close(reason.into())),
            closed(reason, true)
        ]
    );
    assert_eq!(s.queued_bytes(), 0, "freed");
}

#[test]
fn protocol_errors_reset_and_tell_the_peer() {
    let mut over = data_header(0).to_vec();
    over.resize(over.len() + MAX_DATA + 1, 0);
    for (payload, reason) in [
        (vec![KIND_DATA], "protocol error: empty portal message"),
        (msg(9, b""), "protocol error: unknown portal message type 9"),
        (
            msg(T_ACK, b"abc"),
            "protocol error: malformed ACK (3 bytes)",
        ),
        (
            over,
            "protocol error: DATA of 245761 bytes (at most 245760)",
        ),
        (ack(1, 0, 0), "protocol error: an ACK of data never sent"),
        (ack(0, 1, 0), "protocol error: an ACK of data never sent"),
    ] {
        let mut s = session(1 << 20);
        let mut out = Vec::new();
        assert_eq!(s.on_peer(&payload, 0.0, &mut out), None);
        assert_eq!(
            out,
            [
                Action::Send(Control::Close(reason.into())),
                closed(reason, true)
            ]
        );
    }
    let mut s = session(1);
    let mut out = Vec::new();
    s.on_peer(&[0, 2, b'o', b'l', b'd'], 0.0, &mut out);
    let Some(Action::Closed { reason, .. }) = out.last() else {
        panic!("{out:?}")
    };
    assert!(reason.contains("upgrade tether"), "{reason}");
}

#[test]
fn data_after_eof_is_that_error() {
    for len in [0, 10] {
        let mut s = session(1 << 20);
        let mut out = Vec::new();
        s.on_peer(&eof(0), 0.0, &mut out);
        out.clear();
        s.on_peer(&data(1, &vec![0; len]), 0.0, &mut out);
        let reason = "protocol error: DATA after EOF";
        assert_eq!(
            out,
            [
                Action::Send(Control::Close(reason.into())),
                closed(reason, true)
            ]
        );
    }
}

#[test]
fn the_peers_close_ends_without_an_answer() {
    let mut out = Vec::new();
    let mut s = session(1);
    s.on_peer(&msg(T_CLOSE, b"target gone"), 0.0, &mut out);
    assert_eq!(out, [closed("target gone", true)]);
    out.clear();
    let mut s = session(1);
    s.on_peer(&msg(T_CLOSE, b""), 0.0, &mut out);
    assert_eq!(out, [closed("closed by the peer", true)]);
    out.clear();
    let mut s = session(1);
    s.on_peer(&msg(T_OPEN, b"ignored"), 0.0, &mut out);
    assert!(out.is_empty(), "a repeated OPEN is harmless");
}

#[test]
fn a_failure_is_reported_once_and_its_reason_cut_for_the_peer() {
    let mut s = session(1);
    let mut out = Vec::new();
    let long = "é".repeat(MAX_REASON);
    s.fail(&long, false, true, &mut out);
    s.fail("again", true, true, &mut out);
    let Action::Send(Control::Close(sent)) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(sent.len() <= MAX_REASON && long.starts_with(sent.as_str()));
    assert_eq!(out[1], closed(&long, false));
    assert_eq!(out.len(), 2);
    let encoded = Control::Close(long).encode();
    assert_eq!(encoded.len(), 2 + MAX_REASON, "the encoding cuts it too");
}

// --- properties ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Input {
    Peer(Vec<u8>),
    Data(u64, usize, usize),
    Ack(u64, u64, u8),
    Read(usize),
    ReadEof,
    Write(usize),
    Flushed,
    Tick(u8),
    Fail(bool, bool),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Input::Peer),
        (0u64..6, 0usize..MAX_DATA + 2, any::<usize>()).prop_map(|(s, n, w)| Input::Data(s, n, w)),
        (0u64..6, 0u64..3_000_000, 0u8..8).prop_map(|(n, c, f)| Input::Ack(n, c, f)),
        (1usize..=MAX_DATA).prop_map(Input::Read),
        Just(Input::ReadEof),
        (0usize..100_000).prop_map(Input::Write),
        Just(Input::Flushed),
        any::<u8>().prop_map(Input::Tick),
        (any::<bool>(), any::<bool>()).prop_map(|(a, n)| Input::Fail(a, n)),
        (0u64..6).prop_map(|s| Input::Peer(eof(s))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the peer sends and whatever the socket does: the session ends at most once and
    /// then does nothing; what it holds and keeps stays within its window; an orderly end comes
    /// only after both EOFs; it never acknowledges more than it wrote or received.
    #[test]
    fn any_sequence_keeps_the_invariants(window in 1u64..3_000_000, inputs in proptest::collection::vec(input(), 0..60)) {
        let mut s = session(window);
        let mut out = Vec::new();
        let (mut ends, mut shut, mut eof_sent) = (0, false, false);
        let mut written_charge: u64 = 0;
        let mut now = 0.0;
        for i in inputs {
            let was_closed = s.is_closed();
            out.clear();
            match i {
                Input::Peer(p) => { s.on_peer(&p, now, &mut out); }
                Input::Data(seq, n, w) => {
                    let p = data(seq, &vec![0; n]);
                    let queue_was_empty = s.queue_empty();
                    if let Some(body) = s.on_peer(&p, now, &mut out) {
                        let w = if queue_was_empty { w % (body.len() + 1) } else { 0 };
                        if w == body.len() && !s.is_closed() { written_charge += charge(body.len()); }
                        s.data(body, w, &mut out);
                    }
                }
                Input::Ack(n, c, r) => { s.on_peer(&ack(n, c, r), now, &mut out); }
                Input::Read(n) => { if s.read_allowance() >= n { s.on_read(&vec![1; n], now); } }
                Input::ReadEof => s.on_read_eof(now, &mut out),
                Input::Write(n) => {
                    if let Some(p) = s.pending() {
                        let whole = n >= p.len();
                        let c = s.queue.front().map_or(0, |(_, c)| *c);
                        s.wrote(n);
                        if whole { written_charge += c; }
                    }
                }
                Input::Flushed => s.flushed(&mut out),
                Input::Tick(dt) => { now += f64::from(dt) / 8.0; s.on_tick(now, &mut out); }
                Input::Fail(abort, notify) => s.fail("driver", abort, notify, &mut out),
            }
            if was_closed { prop_assert!(out.is_empty(), "{out:?} after the end"); }
            for a in &out {
                match a {
                    Action::Closed { reason, .. } => {
                        ends += 1;
                        if reason.is_empty() { prop_assert!(shut && eof_sent); }
                    }
                    Action::ShutWrite => { prop_assert!(!shut); shut = true; }
                    Action::Send(Control::Eof(_)) => { prop_assert!(!eof_sent); eof_sent = true; }
                    Action::Send(Control::Ack { next, consumed, .. }) => {
                        prop_assert!(*consumed <= written_charge);
                        prop_assert!(*next == s.expect);
                    }
                    _ => {}
                }
            }
            prop_assert!(ends <= 1);
            prop_assert!(s.queued <= s.window + charge(MAX_DATA));
            let held: usize = s.queue.iter().map(|(b, _)| b.len()).sum::<usize>() - s.queue_pos;
            prop_assert_eq!(held, s.queued_bytes());
            let kept: usize = s.retained().map(|(_, b)| b.map_or(0, <[u8]>::len)).sum();
            prop_assert_eq!(kept, s.retained_bytes());
            prop_assert!(kept as u64 <= s.window + MAX_DATA as u64);
        }
    }

}

proptest! {
    // Each case moves up to 300 kB through a lossy path: fewer cases than above.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Two sessions back to back (inlet and outlet), any read sizes, any socket that takes any
    /// part of what it is offered, and a path that loses, repeats and fails (error reports)
    /// for a while: every byte arrives once, in order, both end in order, neither ever holds
    /// or keeps more than its window, and none of it takes past a few retransmissions.
    #[test]
    fn two_sessions_carry_every_byte_in_order_over_a_lossy_path(
        window in 1u64..200_000,
        data_in in proptest::collection::vec(any::<u8>(), 0..300_000),
        reads in proptest::collection::vec(1usize..70_000, 1..20),
        takes in proptest::collection::vec(0usize..90_000, 1..20),
        order in proptest::collection::vec(0u8..5, 1..50),
        fate in proptest::collection::vec(0u8..10, 1..64),
    ) {
        // Long enough for the lossy stretch: nothing gives up on a path that comes back.
        let mut a = Session::new(window, 1000.0, false);
        let mut b = Session::new(window, 1000.0, true);
        let (mut a_to_b, mut b_to_a): (VecDeque<Vec<u8>>, VecDeque<Vec<u8>>) = Default::default();
        let (mut pos, mut got) = (0usize, Vec::new());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let (mut ends, mut b_shut, mut a_shut) = (0, false, false);
        let mut now = 0.0;
        let mut sent = 0usize;
        // The path's fate for each message while A has bytes to send (at most 400 of them), in
        // turn: 0 lost, 1 repeated, 2 an error report instead, else delivered; then it is good
        // again. (A loss of the very last ACK is tested above.)
        let mut carry = |q: &mut VecDeque<Vec<u8>>, back: &mut VecDeque<Vec<u8>>, p: Vec<u8>, lossy: bool| {
            sent += 1;
            match if lossy && sent < 400 { fate[sent % fate.len()] } else { 9 } {
                0 => {}
                1 => { q.push_back(p.clone()); q.push_back(p); }
                2 => back.push_back(b"\x01a hop is down".to_vec()),
                _ => q.push_back(p),
            }
        };
        a.on_peer(&msg(T_OPEN, b""), now, &mut out_a); // the outlet answered
        for step in 0..200_000usize {
            if a.is_closed() && b.is_closed() { break; }
            // Every fifth step goes round all five, so each side makes progress.
            let pick = if step % 5 == 4 { u8::try_from(step / 5 % 5).unwrap_or(0) } else { order[step % order.len()] };
            match pick {
                // A reads its socket (the source) within its allowance.
                0 => {
                    let allowed = a.read_allowance();
                    if allowed > 0 {
                        if pos == data_in.len() {
                            a.on_read_eof(now, &mut out_a);
                        } else {
                            let n = reads[step % reads.len()].min(allowed).min(data_in.len() - pos);
                            let seq = a.on_read(&data_in[pos..pos + n], now);
                            carry(&mut a_to_b, &mut b_to_a, data(seq, &data_in[pos..pos + n]), true);
                            pos += n;
                        }
                    }
                }
                // B takes one message; its socket takes some of each DATA.
                1 => if let Some(p) = a_to_b.pop_front() {
                    let take = takes[step % takes.len()];
                    let empty = b.queue_empty();
                    if let Some(body) = b.on_peer(&p, now, &mut out_b) {
                        let w = if empty { take.min(body.len()) } else { 0 };
                        got.extend_from_slice(&body[..w]);
                        b.data(body, w, &mut out_b);
                    }
                },
                // B's socket takes queued bytes; B's own source is empty (it reads EOF).
                2 => {
                    // The socket takes a few KiB at least each time it is offered bytes (else
                    // nothing could finish within the steps).
                    let mut take = takes[(step * 7) % takes.len()].max(4096);
                    while let Some(p) = b.pending() {
                        let n = take.min(p.len());
                        if n == 0 { break; }
                        got.extend_from_slice(&p[..n]);
                        b.wrote(n);
                        take -= n;
                    }
                    b.flushed(&mut out_b);
                    if b.read_allowance() > 0 { b.on_read_eof(now, &mut out_b); }
                }
                // A takes one of B's messages, and flushes (nothing comes from B but EOF).
                3 => {
                    if let Some(p) = b_to_a.pop_front() {
                        prop_assert!(a.on_peer(&p, now, &mut out_a).is_none());
                    }
                    a.flushed(&mut out_a);
                }
                // Time passes, to the next deadline when the path is quiet.
                _ => {
                    now += 0.01;
                    if a_to_b.is_empty() && b_to_a.is_empty() {
                        let next = [a.deadline(), b.deadline()].into_iter().flatten().fold(f64::INFINITY, f64::min);
                        if next.is_finite() { now = now.max(next); }
                    }
                    a.on_tick(now, &mut out_a);
                    b.on_tick(now, &mut out_b);
                }
            }
            for act in std::mem::take(&mut out_a) {
                match act {
                    Action::Send(Control::Close(r)) => prop_assert!(false, "A closed: {r}"),
                    Action::Send(c) => carry(&mut a_to_b, &mut b_to_a, c.encode(), pos < data_in.len()),
                    Action::Resend => {
                        for p in resent(&a) { carry(&mut a_to_b, &mut b_to_a, p, pos < data_in.len()); }
                    }
                    Action::Closed { reason, .. } => { prop_assert_eq!(reason, ""); ends += 1; }
                    Action::ShutWrite => a_shut = true,
                    Action::Write | Action::ResumeRead => {}
                }
            }
            for act in std::mem::take(&mut out_b) {
                match act {
                    Action::Send(Control::Close(r)) => prop_assert!(false, "B closed: {r}"),
                    Action::Send(c) => carry(&mut b_to_a, &mut a_to_b, c.encode(), pos < data_in.len()),
                    Action::Resend => {
                        for p in resent(&b) { carry(&mut b_to_a, &mut a_to_b, p, pos < data_in.len()); }
                    }
                    Action::Closed { reason, .. } => { prop_assert_eq!(reason, ""); ends += 1; }
                    Action::ShutWrite => { prop_assert_eq!(got.len(), data_in.len()); b_shut = true; }
                    Action::Write | Action::ResumeRead => {}
                }
            }
            prop_assert!(b.queued <= b.window + charge(MAX_DATA));
            prop_assert!(a.retained_bytes() as u64 <= a.window + MAX_DATA as u64);
        }
        prop_assert_eq!(got.len(), data_in.len());
        prop_assert!(got == data_in, "bytes out of order");
        prop_assert!(a_shut && b_shut, "both write halves shut");
        prop_assert_eq!(ends, 2, "A {:?}\nB {:?}", a, b);
    }
}
