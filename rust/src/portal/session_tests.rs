//! The session state machine, with no socket: its rules one by one, then property tests against
//! any sequence of inputs and of two sessions joined back to back.

use super::*;
use crate::portal::{KIND_DATA, KIND_ERROR, MAX_REASON, T_CLOSE, T_CREDIT, T_DATA, T_EOF, T_OPEN};
use proptest::prelude::*;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![KIND_DATA, t];
    p.extend_from_slice(body);
    p
}

fn credit(n: u32) -> Vec<u8> {
    msg(T_CREDIT, &n.to_be_bytes())
}

fn closed(reason: &str, abort: bool) -> Action {
    Action::Closed {
        reason: reason.into(),
        abort,
    }
}

#[test]
fn a_reader_out_of_credit_waits_for_credit() {
    let mut s = Session::new(2048);
    let mut out = Vec::new();
    assert_eq!(s.read_allowance(), MAX_DATA);
    s.on_read(2000);
    assert_eq!(s.read_allowance(), MAX_DATA); // 48 units left: one more read may overdraw
    s.on_read(100); // costs MIN_CHARGE
    assert_eq!(s.credit(), 2048 - 2000 - 512);
    assert_eq!(s.read_allowance(), 0);
    assert!(s.wants_read());
    assert_eq!(s.on_peer(&credit(100), &mut out), None);
    assert!(out.is_empty(), "still overdrawn: no resume");
    assert_eq!(s.on_peer(&credit(1000), &mut out), None);
    assert_eq!(out, [Action::ResumeRead]);
    assert_eq!(s.read_allowance(), MAX_DATA);
    assert_eq!(s.sent(), 2100);
}

#[test]
fn data_written_at_once_is_credited_back_by_quarter_window() {
    let mut s = Session::new(4096); // grant 1024
    let mut out = Vec::new();
    let p = msg(T_DATA, &[7; 600]);
    let body = s.on_peer(&p, &mut out).unwrap();
    assert_eq!(body, &[7; 600][..]);
    s.data(body, body.len(), &mut out);
    assert!(out.is_empty(), "600 < the 1024 grant");
    let p = msg(T_DATA, b"x");
    let body = s.on_peer(&p, &mut out).unwrap();
    s.data(body, 1, &mut out);
    assert_eq!(out, [Action::Send(Control::Credit(1112))]); // 600 + MIN_CHARGE
    assert_eq!(s.received(), 601);
}

#[test]
fn what_the_socket_does_not_take_is_queued_and_written_later() {
    let mut s = Session::new(1 << 20);
    let mut out = Vec::new();
    let p = msg(T_DATA, b"hello world");
    let body = s.on_peer(&p, &mut out).unwrap();
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
fn half_close_both_ways_is_an_orderly_end() {
    let mut s = Session::new(1 << 20);
    let mut out = Vec::new();
    s.on_read_eof(&mut out);
    assert_eq!(out, [Action::Send(Control::Eof)]);
    assert_eq!(s.read_allowance(), 0);
    out.clear();
    s.on_peer(&msg(T_EOF, b""), &mut out);
    assert_eq!(out, [Action::Write]);
    out.clear();
    s.flushed(&mut out);
    assert_eq!(out, [Action::ShutWrite, closed("", false)]);
    assert!(s.is_closed());
    out.clear();
    s.on_peer(&msg(T_DATA, b"late"), &mut out);
    s.flushed(&mut out);
    assert!(out.is_empty(), "nothing after the end");
}

#[test]
fn the_write_half_is_shut_only_after_the_queue() {
    let mut s = Session::new(1 << 20);
    let mut out = Vec::new();
    let p = msg(T_DATA, b"abc");
    let body = s.on_peer(&p, &mut out).unwrap();
    s.data(body, 0, &mut out);
    s.on_peer(&msg(T_EOF, b""), &mut out);
    out.clear();
    s.flushed(&mut out);
    assert!(out.is_empty(), "abc still queued");
    s.wrote(3);
    s.flushed(&mut out);
    assert_eq!(out, [Action::ShutWrite]);
}

#[test]
fn a_peer_that_overruns_its_window_is_refused() {
    let mut s = Session::new(1000);
    let mut out = Vec::new();
    let big = msg(T_DATA, &vec![1; MAX_DATA]);
    let body = s.on_peer(&big, &mut out).unwrap();
    s.data(body, 0, &mut out); // window + charge(MAX_DATA) is the bound: not yet over
    assert_eq!(out, [Action::Write]);
    out.clear();
    let body = s.on_peer(&big, &mut out).unwrap();
    s.data(body, 0, &mut out);
    let reason = "protocol error: the peer overran its flow-control window";
    assert_eq!(
        out,
        [
            Action::Send(Control::Close(reason.into())),
            closed(reason, true)
        ]
    );
}

#[test]
fn protocol_errors_reset_and_tell_the_peer() {
    for (payload, reason) in [
        (vec![KIND_DATA], "protocol error: empty portal message"),
        (msg(9, b""), "protocol error: unknown portal message type 9"),
        (msg(T_CREDIT, b"abc"), "protocol error: malformed CREDIT"),
        (
            msg(T_DATA, &vec![0; MAX_DATA + 1]),
            "protocol error: DATA of 245761 bytes (at most 245760)",
        ),
    ] {
        let mut s = Session::new(1 << 20);
        let mut out = Vec::new();
        assert_eq!(s.on_peer(&payload, &mut out), None);
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
fn data_after_eof_is_that_error_whatever_its_size() {
    for len in [0, 10, MAX_DATA + 1] {
        let mut s = Session::new(1 << 20);
        let mut out = Vec::new();
        s.on_peer(&msg(T_EOF, b""), &mut out);
        out.clear();
        s.on_peer(&msg(T_DATA, &vec![0; len]), &mut out);
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
fn the_peers_close_and_path_failures_end_without_an_answer() {
    let mut out = Vec::new();
    let mut s = Session::new(1);
    s.on_peer(&msg(T_CLOSE, b"target gone"), &mut out);
    assert_eq!(out, [closed("target gone", true)]);
    out.clear();
    let mut s = Session::new(1);
    s.on_peer(&msg(T_CLOSE, b""), &mut out);
    assert_eq!(out, [closed("closed by the peer", true)]);
    out.clear();
    let mut s = Session::new(1);
    s.on_peer(&[KIND_ERROR, b'n', b'o'], &mut out);
    assert_eq!(out, [closed("the path to the peer failed: no", true)]);
    out.clear();
    let mut s = Session::new(1);
    s.on_peer(&msg(T_OPEN, b"ignored"), &mut out);
    assert!(out.is_empty(), "a repeated OPEN is harmless");
}

#[test]
fn a_failure_is_reported_once_and_its_reason_cut_for_the_peer() {
    let mut s = Session::new(1);
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
}

// --- properties ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Input {
    Peer(Vec<u8>),
    Data(usize, usize),
    Credit(u32),
    Read(usize),
    ReadEof,
    Write(usize),
    Flushed,
    Fail(bool, bool),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Input::Peer),
        (0usize..MAX_DATA + 2, any::<usize>()).prop_map(|(n, w)| Input::Data(n, w)),
        any::<u32>().prop_map(Input::Credit),
        (1usize..=MAX_DATA).prop_map(Input::Read),
        Just(Input::ReadEof),
        (0usize..100_000).prop_map(Input::Write),
        Just(Input::Flushed),
        (any::<bool>(), any::<bool>()).prop_map(|(a, n)| Input::Fail(a, n)),
        Just(Input::Peer(msg(T_EOF, b""))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the peer sends and whatever the socket does: the session ends at most once and
    /// then does nothing; what it holds stays within its window; an orderly end comes only
    /// after both EOFs; it never credits back more than it wrote.
    #[test]
    fn any_sequence_keeps_the_invariants(window in 1u64..3_000_000, inputs in proptest::collection::vec(input(), 0..60)) {
        let mut s = Session::new(window);
        let mut out = Vec::new();
        let (mut ends, mut shut, mut eof_sent) = (0, false, false);
        let mut credited: u64 = 0;
        let mut written_charge: u64 = 0;
        for i in inputs {
            let was_closed = s.is_closed();
            out.clear();
            match i {
                Input::Peer(p) => { s.on_peer(&p, &mut out); }
                Input::Data(n, w) => {
                    let p = msg(T_DATA, &vec![0; n]);
                    let queue_was_empty = s.queue_empty();
                    if let Some(body) = s.on_peer(&p, &mut out) {
                        let w = if queue_was_empty { w % (body.len() + 1) } else { 0 };
                        if w == body.len() && !s.is_closed() { written_charge += charge(body.len()); }
                        s.data(body, w, &mut out);
                    }
                }
                Input::Credit(n) => { s.on_peer(&credit(n), &mut out); }
                Input::Read(n) => { if s.read_allowance() >= n { s.on_read(n); } }
                Input::ReadEof => s.on_read_eof(&mut out),
                Input::Write(n) => {
                    if let Some(p) = s.pending() {
                        let whole = n >= p.len();
                        let c = s.queue.front().map_or(0, |(_, c)| *c);
                        s.wrote(n);
                        if whole { written_charge += c; }
                    }
                }
                Input::Flushed => s.flushed(&mut out),
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
                    Action::Send(Control::Eof) => { prop_assert!(!eof_sent); eof_sent = true; }
                    Action::Send(Control::Credit(n)) => credited += u64::from(*n),
                    _ => {}
                }
            }
            prop_assert!(ends <= 1);
            prop_assert!(s.queued <= s.window + charge(MAX_DATA));
            let held: usize = s.queue.iter().map(|(b, _)| b.len()).sum::<usize>() - s.queue_pos;
            prop_assert_eq!(held, s.queued_bytes());
            prop_assert!(credited <= written_charge);
        }
    }

    /// Two sessions back to back (inlet and outlet), any read sizes, any socket that takes any
    /// part of what it is offered, messages delivered in order: every byte arrives, in order,
    /// both end in order, and neither ever holds more than its window.
    #[test]
    fn two_sessions_carry_every_byte_in_order(
        window in 1u64..200_000,
        data in proptest::collection::vec(any::<u8>(), 0..300_000),
        reads in proptest::collection::vec(1usize..70_000, 1..20),
        takes in proptest::collection::vec(0usize..90_000, 1..20),
        order in proptest::collection::vec(0u8..4, 1..50),
    ) {
        let (mut a, mut b) = (Session::new(window), Session::new(window));
        let (mut a_to_b, mut b_to_a): (VecDeque<Vec<u8>>, VecDeque<Vec<u8>>) = Default::default();
        let (mut pos, mut got) = (0usize, Vec::new());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let (mut ends, mut b_shut, mut a_shut) = (0, false, false);
        for step in 0..50_000usize {
            if a.is_closed() && b.is_closed() { break; }
            // Every fourth step goes round all four, so each side makes progress.
            let pick = if step % 4 == 3 { u8::try_from(step / 4 % 4).unwrap_or(0) } else { order[step % order.len()] };
            match pick {
                // A reads its socket (the source) within its allowance.
                0 => {
                    let allowed = a.read_allowance();
                    if allowed > 0 {
                        if pos == data.len() {
                            a.on_read_eof(&mut out_a);
                        } else {
                            let n = reads[step % reads.len()].min(allowed).min(data.len() - pos);
                            a.on_read(n);
                            a_to_b.push_back(msg(T_DATA, &data[pos..pos + n]));
                            pos += n;
                        }
                    }
                }
                // B takes one message; its socket takes some of each DATA.
                1 => if let Some(p) = a_to_b.pop_front() {
                    let take = takes[step % takes.len()];
                    let empty = b.queue_empty();
                    if let Some(body) = b.on_peer(&p, &mut out_b) {
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
                    if b.read_allowance() > 0 { b.on_read_eof(&mut out_b); }
                }
                // A takes one of B's messages, and flushes (nothing comes from B but EOF).
                _ => {
                    if let Some(p) = b_to_a.pop_front() {
                        prop_assert!(a.on_peer(&p, &mut out_a).is_none());
                    }
                    a.flushed(&mut out_a);
                }
            }
            for act in std::mem::take(&mut out_a) {
                match act {
                    Action::Send(Control::Eof) => a_to_b.push_back(msg(T_EOF, b"")),
                    Action::Send(Control::Credit(n)) => a_to_b.push_back(credit(n)),
                    Action::Send(Control::Close(r)) => prop_assert!(false, "A closed: {r}"),
                    Action::Closed { reason, .. } => { prop_assert_eq!(reason, ""); ends += 1; }
                    Action::ShutWrite => a_shut = true,
                    Action::Write | Action::ResumeRead => {}
                }
            }
            for act in std::mem::take(&mut out_b) {
                match act {
                    Action::Send(Control::Eof) => b_to_a.push_back(msg(T_EOF, b"")),
                    Action::Send(Control::Credit(n)) => b_to_a.push_back(credit(n)),
                    Action::Send(Control::Close(r)) => prop_assert!(false, "B closed: {r}"),
                    Action::Closed { reason, .. } => { prop_assert_eq!(reason, ""); ends += 1; }
                    Action::ShutWrite => { prop_assert_eq!(got.len(), data.len()); b_shut = true; }
                    Action::Write | Action::ResumeRead => {}
                }
            }
            prop_assert!(b.queued <= b.window + charge(MAX_DATA));
        }
        prop_assert_eq!(got.len(), data.len());
        prop_assert!(got == data, "bytes out of order");
        prop_assert!(a_shut && b_shut, "both write halves shut");
        prop_assert_eq!(ends, 2);
    }
}
