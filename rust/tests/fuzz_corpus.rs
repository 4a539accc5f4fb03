//! The committed fuzz corpus (`rust/fuzz/corpus/<target>/`) as a regression suite on the stable
//! toolchain: every file of every target goes through the same check the cargo-fuzz target runs
//! (`rust/fuzz/src/checks.rs`, included here, the one copy). Fuzzing itself needs nightly
//! (`ci/fuzz`); this needs nothing.
//!
//! The hand-made seeds (`seed-*` files) are generated below by [`seeds`]: after changing a seed
//! or a wire format, rewrite them with
//! `TETHER_WRITE_SEEDS=1 cargo test --test fuzz_corpus -- --ignored write_seeds`.
//! `seeds_are_committed` fails until then. Other files are inputs the fuzzer found (regressions).

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use checks::TARGETS;
use tether_core::channel::ChannelCipher;
use tether_core::frame::encode_into;
use tether_core::noise::Suite;
use tether_core::portal::{self, PortalMessage};
use tether_core::route::{self, Address};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn run_corpus(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let files = corpus_files(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = fs::read(f).expect("a corpus file");
            catch_unwind(|| check(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus inputs fail its check: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn frame_corpus() {
    run_corpus("frame");
}

#[test]
fn routed_message_corpus() {
    run_corpus("routed_message");
}

#[test]
fn noise_handshake_corpus() {
    run_corpus("noise_handshake");
}

#[test]
fn channel_open_corpus() {
    run_corpus("channel_open");
}

#[test]
fn portal_message_corpus() {
    run_corpus("portal_message");
}

#[test]
fn records_open_corpus() {
    run_corpus("records_open");
}

#[test]
fn nats_decode_corpus() {
    run_corpus("nats_decode");
}

#[test]
fn every_corpus_directory_is_a_target() {
    let mut dirs: Vec<String> = fs::read_dir(corpus_dir())
        .expect("rust/fuzz/corpus")
        .map(|e| e.expect("a directory entry").file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    assert_eq!(dirs, names);
}

#[test]
fn seeds_are_committed() {
    let stale: Vec<String> = seeds()
        .into_iter()
        .filter(|(target, name, data)| {
            fs::read(corpus_dir().join(target).join(name)).ok().as_ref() != Some(data)
        })
        .map(|(target, name, _)| format!("{target}/{name}"))
        .collect();
    assert!(
        stale.is_empty(),
        "seeds missing or stale (regenerate them, see the module docs): {stale:?}"
    );
}

#[test]
#[ignore = "writes the seed corpus; run with TETHER_WRITE_SEEDS=1"]
fn write_seeds() {
    if std::env::var_os("TETHER_WRITE_SEEDS").is_none() {
        return;
    }
    for (target, name, data) in seeds() {
        let dir = corpus_dir().join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        fs::write(dir.join(name), data).expect("write a seed");
    }
}

// --- the seeds --------------------------------------------------------------------------------

type Seed = (&'static str, String, Vec<u8>);

fn seed(out: &mut Vec<Seed>, target: &'static str, name: &str, data: Vec<u8>) {
    out.push((target, format!("seed-{name}"), data));
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    frame_seeds(&mut out);
    route_seeds(&mut out);
    noise_seeds(&mut out);
    channel_seeds(&mut out);
    portal_seeds(&mut out);
    records_seeds(&mut out);
    nats_seeds(&mut out);
    out
}

fn nats_seeds(out: &mut Vec<Seed>) {
    let stream: &[(&str, &[u8])] = &[
        ("info", b"INFO {\"server_id\":\"s\",\"max_payload\":64}\r\n"),
        ("ping-pong-ok", b"PING\r\nPONG\r\n+OK\r\n"),
        (
            "err",
            b"-ERR 'Permissions Violation for Subscription to \"tether.db.*\"'\r\n",
        ),
        ("msg", b"MSG tether.a.b 1 5\r\nhello\r\n"),
        ("msg-reply", b"MSG tether.a.b 1 _INBOX.x 2\r\nhi\r\n"),
        ("hmsg", b"HMSG a 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"),
        ("too-large", b"MSG a 1 100\r\n"),
        ("bad-end", b"MSG a 1 2\r\nabcd\r\n"),
        ("unknown", b"HELLO\r\n"),
    ];
    for (name, bytes) in stream {
        seed(out, "nats_decode", name, cat(&[&[64, 3], bytes]));
    }
}

fn frames(payloads: &[&[u8]]) -> Vec<u8> {
    let mut s = Vec::new();
    for p in payloads {
        encode_into(p, &mut s).expect("a small frame");
    }
    s
}

/// `limit selector, cut count, cuts, stream` (see `checks::frame`).
fn frame_input(limit: u8, cuts: &[u8], stream: &[u8]) -> Vec<u8> {
    let count = u8::try_from(cuts.len()).expect("at most 7 cuts");
    cat(&[&[limit, count], cuts, stream])
}

fn frame_seeds(out: &mut Vec<Seed>) {
    let three = frames(&[b"", b"a", b"hello world"]);
    let at_limit = frames(&[&[1; 10]]);
    let mut over = frames(&[b"ok"]);
    over.extend_from_slice(&11u32.to_be_bytes());
    over.extend_from_slice(&[0; 11]);
    let mut partial = frames(&[b"whole"]);
    partial.extend_from_slice(&frames(&[b"half of it"])[..9]);
    let big = frames(&[&[7; 1000], &[8; 300]]);
    let cases: [(&str, Vec<u8>); 9] = [
        ("empty", frame_input(16, &[], b"")),
        ("three-frames", frame_input(16, &[], &three)),
        (
            "three-frames-cut",
            frame_input(16, &[0, 40, 90, 200], &three),
        ),
        ("at-limit", frame_input(10, &[128], &at_limit)),
        ("over-limit-cut", frame_input(10, &[20, 30, 200], &over)),
        ("max-header", frame_input(127, &[], &u32::MAX.to_be_bytes())),
        ("partial-tail", frame_input(64, &[100], &partial)),
        (
            "byte-cuts",
            frame_input(16, &[1, 2, 3, 4, 5, 6, 7], &frames(&[b"abc", b"defg"])),
        ),
        ("large-limit", frame_input(150, &[1, 128, 254], &big)),
    ];
    for (name, data) in cases {
        seed(out, "frame", name, data);
    }
}

fn addr(transport: u16, value: &[u8]) -> Address<'_> {
    Address { transport, value }
}

fn route_seeds(out: &mut Vec<Seed>) {
    let enc = |on: &[Address<'_>], ret: &[Address<'_>], p: &[u8]| {
        route::encode(on, ret, p).expect("encodes")
    };
    let two_hops = enc(
        &[addr(1, b"127.0.0.1:4000"), addr(0, b"echo")],
        &[addr(0, b"app")],
        b"hello",
    );
    let wide = [0xabu8; 255];
    let max_hops = vec![addr(0, b"x"); route::MAX_HOPS];
    let mut trailing = two_hops.clone();
    trailing.push(0);
    let mut count_65 = vec![1u8, 65];
    for _ in 0..65 {
        count_65.extend_from_slice(&[0, 0, 1, b'x']);
    }
    let cases: [(&str, Vec<u8>); 11] = [
        ("minimal", enc(&[], &[], b"")),
        ("known", enc(&[addr(0, b"e")], &[], b"hi")),
        ("two-hops", two_hops.clone()),
        (
            "wide-address",
            enc(&[addr(65535, &wide)], &[addr(1, &wide)], b""),
        ),
        ("max-hops", enc(&max_hops, &max_hops, b"p")),
        ("truncated", two_hops[..two_hops.len() - 3].to_vec()),
        ("trailing", trailing),
        ("version-2", vec![2, 0, 0, 0, 0, 0, 0]),
        ("count-65", count_65),
        ("empty-address", vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (
            "payload-overrun",
            vec![1, 0, 0, 0xff, 0xff, 0xff, 0xff, b'x'],
        ),
    ];
    for (name, data) in cases {
        seed(out, "routed_message", name, data);
    }
}

/// `selector, message` with the suite and stage (see `checks::noise_handshake`).
fn noise_input(suite: usize, stage: u8, msg: &[u8]) -> Vec<u8> {
    let suite = u8::try_from(suite).expect("a suite index");
    cat(&[&[suite | (stage << 2)], msg])
}

fn noise_seeds(out: &mut Vec<Seed>) {
    for (s, suite) in Suite::ALL.into_iter().enumerate() {
        let genuine = checks::genuine_handshake(suite);
        for (stage, m) in (0u8..).zip(&genuine) {
            let name = format!("suite{s}-msg{}-genuine", stage + 1);
            seed(out, "noise_handshake", &name, noise_input(s, stage, m));
        }
        if s > 0 {
            continue;
        }
        for (stage, m) in (0u8..).zip(&genuine) {
            let n = stage + 1;
            let mut flipped = m.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            let mut extended = m.clone();
            extended.push(0);
            let short = &m[..m.len() - 1];
            seed(
                out,
                "noise_handshake",
                &format!("msg{n}-flipped"),
                noise_input(s, stage, &flipped),
            );
            seed(
                out,
                "noise_handshake",
                &format!("msg{n}-extended"),
                noise_input(s, stage, &extended),
            );
            seed(
                out,
                "noise_handshake",
                &format!("msg{n}-short"),
                noise_input(s, stage, short),
            );
            seed(
                out,
                "noise_handshake",
                &format!("msg{n}-empty"),
                noise_input(s, stage, b""),
            );
        }
        seed(
            out,
            "noise_handshake",
            "msg1-low-order-e",
            noise_input(s, 0, &[0; 32]),
        );
    }
}

fn channel_seeds(out: &mut Vec<Seed>) {
    // Selectors: suite (bits 0-1), associated data (bit 2), pre-state (bits 3-7).
    let selector = |suite: u8, ad: bool, pre: u8| suite | (u8::from(ad) << 2) | (pre << 3);
    for selector in [
        selector(0, false, 0),
        selector(1, true, 0),
        selector(2, true, 2),
        selector(3, false, 16),
        selector(0, false, 18),
        selector(3, true, 31),
    ] {
        let ad = checks::channel_ad(selector);
        let mut s = checks::channel_setup(selector);
        let name = |what: &str| format!("sel{selector:03}-{what}");
        let input = |msg: &[u8]| cat(&[&[selector], msg]);
        let mut next = vec![0; ChannelCipher::sealed_len(4)];
        s.tx.seal_to_ad(ad, b"next", &mut next).expect("seal");
        let mut flipped = next.clone();
        flipped[10] ^= 0x80;
        seed(out, "channel_open", &name("next"), input(&next));
        seed(out, "channel_open", &name("next-flipped"), input(&flipped));
        seed(out, "channel_open", &name("replay"), input(&s.delivered));
        if let Some(p) = s.pending.take() {
            seed(out, "channel_open", &name("pending"), input(&p));
        }
        if selector == 0 {
            let mut wrong_ad = vec![0; ChannelCipher::sealed_len(4)];
            s.tx.seal_to_ad(checks::CHANNEL_AD, b"next", &mut wrong_ad)
                .expect("seal");
            let mut far = next.clone();
            far[..8].copy_from_slice(&(20 * checks::CHANNEL_REKEY_INTERVAL).to_be_bytes());
            let mut last = next.clone();
            last[..8].copy_from_slice(&u64::MAX.to_be_bytes());
            seed(out, "channel_open", "wrong-ad", input(&wrong_ad));
            seed(out, "channel_open", "far-epoch", input(&far));
            seed(out, "channel_open", "nonce-max", input(&last));
            seed(out, "channel_open", "short", input(&next[..23]));
            seed(out, "channel_open", "empty", input(b""));
        }
    }
}

fn portal_seeds(out: &mut Vec<Seed>) {
    let encode = |m: PortalMessage<'_>| m.encode().expect("encodes");
    let long_reason = vec![b'r'; portal::MAX_REASON + 100];
    let cases: [(&str, Vec<u8>); 21] = [
        ("open", encode(PortalMessage::Open)),
        (
            "data",
            encode(PortalMessage::Data {
                seq: 7,
                bytes: b"GET / HTTP/1.1\r\n\r\n",
            }),
        ),
        (
            "data-empty",
            encode(PortalMessage::Data { seq: 0, bytes: b"" }),
        ),
        (
            "data-4k",
            encode(PortalMessage::Data {
                seq: u64::MAX,
                bytes: &[0x5a; 4096],
            }),
        ),
        ("data-short", vec![0, portal::T_DATA, 1, 2, 3]),
        ("eof", encode(PortalMessage::Eof { seq: 3 })),
        (
            "eof-long",
            vec![0, portal::T_EOF, 0, 0, 0, 0, 0, 0, 0, 1, 9],
        ),
        ("close", encode(PortalMessage::Close(b"closed by the peer"))),
        ("close-empty", encode(PortalMessage::Close(b""))),
        ("close-long", cat(&[&[0, portal::T_CLOSE], &long_reason])),
        (
            "ack",
            encode(PortalMessage::Ack {
                next: 2,
                consumed: 65536,
                flags: portal::ACK_RESEND | portal::ACK_PROBE,
            }),
        ),
        ("ack-short", vec![0, portal::T_ACK, 1, 2, 3]),
        (
            "ack-bad-flags",
            cat(&[&[0, portal::T_ACK], &[0; 16], &[0x80]]),
        ),
        ("retired-credit", vec![0, 5, 0, 1, 0, 0]),
        (
            "path-failed",
            encode(PortalMessage::PathFailed(b"no route to node b")),
        ),
        (
            "path-failed-long",
            cat(&[&[portal::KIND_ERROR], &long_reason]),
        ),
        ("empty", vec![]),
        ("kind-only", vec![0]),
        ("unknown-type", vec![0, 9, 1]),
        ("open-with-junk", vec![0, portal::T_OPEN, 0xff]),
        (
            "odd-kind-data",
            vec![9, portal::T_DATA, 0, 0, 0, 0, 0, 0, 0, 0, b'x'],
        ),
    ];
    for (name, data) in cases {
        seed(out, "portal_message", name, data);
    }
}

fn records_seeds(out: &mut Vec<Seed>) {
    // Selectors: algorithm (bit 0), one record already opened at position 5 (bit 1).
    for selector in 0u8..4 {
        let name = |what: &str| format!("sel{selector}-{what}");
        let input = |record: &[u8]| cat(&[&[selector], record]);
        let next = if selector & 2 == 0 {
            0
        } else {
            checks::RECORD_OPENED + 1
        };
        let mut s = checks::record_sealer(selector, next);
        let record = s
            .seal(
                &[("content-type", &b"json"[..]), ("k", &b""[..])],
                b"{\"n\": 1}",
            )
            .expect("seal");
        let mut flipped = record.clone();
        flipped[30] ^= 0x40;
        let ahead = checks::record_sealer(selector, next + 3)
            .seal(&[], b"after a gap")
            .expect("seal");
        seed(out, "records_open", &name("next"), input(&record));
        seed(out, "records_open", &name("flipped"), input(&flipped));
        seed(out, "records_open", &name("gap"), input(&ahead));
        if selector & 2 != 0 {
            let replay = checks::record_sealer(selector, checks::RECORD_OPENED)
                .seal(&[], b"first")
                .expect("seal");
            let older = checks::record_sealer(selector, 1)
                .seal(&[], b"older")
                .expect("seal");
            seed(out, "records_open", &name("replay"), input(&replay));
            seed(out, "records_open", &name("older"), input(&older));
        }
        if selector == 0 {
            let mut other_key = record.clone();
            other_key[1] ^= 1;
            let mut version = record.clone();
            version[0] = 2;
            seed(out, "records_open", "unknown-key", input(&other_key));
            seed(out, "records_open", "version-2", input(&version));
            seed(out, "records_open", "short", input(&record[..40]));
            seed(out, "records_open", "empty", input(b""));
        }
    }
}
