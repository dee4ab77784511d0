//! Property tests of the pure core: decoders never panic; the delta rules' invariants hold.
#![allow(clippy::unwrap_used, clippy::type_complexity)] // Test helpers: a panic is a failed test.

use proptest::prelude::*;
use rating_core::accounting::{
    ApplyOutput, Engine, NasPolicy, COUNTER_RESET, INTERIM_AFTER_STOP, OUTCOME_ACCEPTED,
    OUTCOME_DUPLICATE, OUTCOME_LATE, OUTCOME_QUARANTINED, STOP_REGRESSION,
};
use rating_core::proto::write;
use rating_core::{proto, radius, record};

const US: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * US;

#[derive(Debug, Clone)]
struct Rec {
    status: u8,
    sid: u8,
    t: u32,
    input: Option<u64>,
    output: Option<u64>,
}

fn entry(r: &Rec) -> Vec<u8> {
    let mut m = Vec::new();
    write::uint(&mut m, 1, u64::from(r.status));
    write::bytes(&mut m, 2, format!("s{}", r.sid).as_bytes());
    write::bytes(&mut m, 6, b"nas1");
    if let Some(v) = r.input {
        write::uint(&mut m, 10, v & 0xffff_ffff);
        write::uint(&mut m, 11, v >> 32);
    }
    if let Some(v) = r.output {
        write::uint(&mut m, 12, v & 0xffff_ffff);
    }
    write::uint(&mut m, 14, u64::from(r.t));
    let at = T0 + i64::from(r.t) * US;
    write::timestamp(&mut m, 15, at);
    write::timestamp(&mut m, 23, at);
    let mut e = Vec::new();
    write::bytes(&mut e, 1, &m);
    e
}

fn batch(recs: &[Rec]) -> Vec<u8> {
    let mut b = Vec::new();
    write::bytes(&mut b, 1, b"batch");
    for r in recs {
        write::bytes(&mut b, 2, &entry(r));
    }
    b
}

fn rec_strategy() -> impl Strategy<Value = Rec> {
    (
        prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(3u8), Just(3u8)],
        0u8..3,
        0u32..20_000,
        proptest::option::weighted(0.9, 0u64..(1 << 34)),
        proptest::option::weighted(0.9, 0u64..(1 << 31)),
    )
        .prop_map(|(status, sid, t, input, output)| Rec {
            status,
            sid,
            t,
            input,
            output,
        })
}

/// Final (nas, sid, generation) → (input, output, time, open) and per-session bucket sums.
type Summary = Vec<(String, u32, u64, u64, u32, bool, u64, u64, u64)>;

fn run(chunks: &[&[Rec]]) -> Summary {
    let mut engine = Engine::new(NasPolicy::default());
    let mut state: std::collections::BTreeMap<(String, u32), (u64, u64, u32, bool, u64, u64, u64)> =
        std::collections::BTreeMap::new();
    let mut ledger = std::collections::HashSet::new();
    for chunk in chunks {
        let bytes = batch(chunk);
        let p = engine.prepare(&bytes, T0).unwrap();
        let known: Vec<bool> = p.records.iter().map(|r| ledger.contains(&r.key)).collect();
        let out = engine.apply_known(&p, &bytes, Some(&known));
        for (i, r) in p.records.iter().enumerate() {
            if out.outcome[i] == OUTCOME_ACCEPTED || out.outcome[i] == OUTCOME_LATE {
                ledger.insert(r.key);
            }
        }
        let s = &out.sessions;
        for i in 0..s.len() {
            let e = state
                .entry((s.acct_session_id.get(i).to_owned(), s.generation[i]))
                .or_default();
            e.0 = s.input_bytes[i];
            e.1 = s.output_bytes[i];
            e.2 = s.session_time_s[i];
            e.3 = s.open[i];
        }
        for b in 0..out.bucket_hour_us.len() {
            let row = out.bucket_session_index[b] as usize;
            let e = state
                .entry((s.acct_session_id.get(row).to_owned(), s.generation[row]))
                .or_default();
            e.4 += out.bucket_input_bytes[b];
            e.5 += out.bucket_output_bytes[b];
            e.6 += out.bucket_session_s[b];
        }
    }
    state
        .into_iter()
        .map(|((sid, g), v)| (sid, g, v.0, v.1, v.2, v.3, v.4, v.5, v.6))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn radius_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(p) = radius::frame(&data) {
            prop_assert!(p.bytes.len() >= 20 && p.bytes.len() <= data.len());
            let _ = radius::parse_attrs(p.attributes);
            let _ = radius::verify_request(&p, b"k");
            prop_assert!(radius::accounting_response(&data, b"k").is_ok());
        }
    }

    #[test]
    fn prepare_never_panics_and_keeps_every_entry(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut engine = Engine::new(NasPolicy::default());
        engine.set_secret("1.2.3.4", b"k");
        if let Ok(p) = engine.prepare(&data, 0) {
            let out = engine.apply(&p, &data);
            prop_assert_eq!(out.outcome.len(), p.records.len());
            for (i, o) in out.outcome.iter().enumerate() {
                prop_assert_eq!(*o == OUTCOME_QUARANTINED, p.quarantine.iter().any(|q| q.0 as usize == i));
            }
            // An Accounting-Response only for a raw entry that was not quarantined.
            for (i, _) in &p.responses {
                prop_assert!(out.outcome[*i as usize] != OUTCOME_QUARANTINED);
            }
        }
    }

    #[test]
    fn timestamp_fast_path_agrees_with_the_generic_reader(
        inner in proptest::collection::vec(any::<u8>(), 0..24),
        seconds in any::<i64>(),
        nanos in any::<u32>(),
        form in 0u8..3,
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        // Timestamp bytes that are arbitrary, well-formed, or well-formed but cut short
        // anywhere, read in place with the record's following bytes after them: a varint
        // must never run on past its sub-message.
        let inner = if form == 0 {
            inner
        } else {
            let mut m = Vec::new();
            write::uint(&mut m, 1, seconds as u64);
            write::uint(&mut m, 2, u64::from(nanos));
            if form == 2 {
                m.truncate(cut.index(m.len()));
            }
            m
        };
        let mut m = Vec::new();
        write::bytes(&mut m, 15, &inner);
        let field_end = m.len();
        m.extend_from_slice(&tail);
        let expected = proto::timestamp_us(15, proto::Value::Bytes(&inner));
        match proto::decode_record(&m) {
            Ok(r) => prop_assert_eq!(Ok(r.event_timestamp_us.unwrap_or(i64::MIN)), expected),
            // The timestamp itself failed, or (with a good timestamp) the tail is malformed.
            Err(e) => prop_assert!(
                expected == Err(e) || (expected.is_ok() && proto::decode_record(&m[..field_end]).is_ok()),
                "{e} vs {expected:?}"
            ),
        }
    }

    #[test]
    fn decoded_record_varints_read_back_exactly(
        status in 0u64..16,
        session_time in prop_oneof![0u64..1 << 32, any::<u64>()],
        input in any::<u32>(),
        seconds in -62_135_596_800i64..253_402_300_800,
        micros in 0i64..1_000_000,
        sid_len in 1usize..300,
        cause in proptest::option::of(any::<u32>()),
    ) {
        // Every varint width (1 to 10 bytes), at the end of the buffer or followed by more.
        let sid = vec![b'x'; sid_len];
        let at = seconds * US + micros;
        let mut m = Vec::new();
        write::uint(&mut m, 1, status);
        write::bytes(&mut m, 2, &sid);
        write::uint(&mut m, 10, u64::from(input));
        write::timestamp(&mut m, 15, at);
        write::uint(&mut m, 14, session_time);
        if let Some(c) = cause {
            write::uint(&mut m, 17, u64::from(c));
        }
        match proto::decode_record(&m) {
            Ok(r) => {
                prop_assert_eq!(u64::from(r.status_type), status);
                prop_assert_eq!(r.acct_session_id, &sid[..]);
                prop_assert_eq!(r.input_octets, Some(input));
                prop_assert_eq!(r.event_timestamp_us, Some(at));
                prop_assert_eq!(r.session_time_s.map(u64::from), Some(session_time));
                prop_assert_eq!(r.terminate_cause, cause);
            }
            Err(e) => {
                prop_assert!(session_time > u64::from(u32::MAX), "{e}");
                prop_assert_eq!(e, proto::WireError::Range(14));
            }
        }
    }

    #[test]
    fn a_record_read_in_place_reads_as_the_record_alone(
        head in proptest::collection::vec(any::<u8>(), 0..12),
        fields in proptest::collection::vec(
            (1u64..40, 0u8..4, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..12)),
            0..16,
        ),
        noise in proptest::option::weighted(0.2, proptest::collection::vec(any::<u8>(), 0..48)),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        // In a batch, the decoder reads varints a word at a time, past the record's end
        // into the next entry, and reuses its slots from record to record: neither may
        // change what it reads (values or errors) from what the record alone gives.
        let body = noise.unwrap_or_else(|| {
            let mut m = Vec::new();
            for (field, kind, value, bytes) in &fields {
                match kind {
                    0 => write::uint(&mut m, *field as u32, value >> (value % 64)),
                    1 => write::bytes(&mut m, *field as u32, bytes),
                    2 => write::timestamp(&mut m, *field as u32, *value as i64 >> 8),
                    // A tag with any wire type, then arbitrary bytes.
                    _ => {
                        write::varint(&mut m, (field << 3) | (value % 8));
                        m.extend_from_slice(bytes);
                    }
                }
            }
            m
        });
        let mut full = Vec::new();
        for (field, value) in [(1, 3), (10, 1 << 31), (11, 7), (14, 600), (16, 9), (17, 1)] {
            write::uint(&mut full, field, value);
        }
        for field in [2, 3, 4, 5, 6, 7, 18, 21] {
            write::bytes(&mut full, field, b"1.2.3.4");
        }
        write::timestamp(&mut full, 15, T0);
        write::timestamp(&mut full, 23, T0);
        let mut buf = full.clone();
        buf.extend_from_slice(&head);
        let start = buf.len();
        buf.extend_from_slice(&body);
        let end = buf.len();
        buf.extend_from_slice(&tail);
        let mut slots = proto::RecordSlots::default();
        prop_assert!(proto::decode_record_in(&buf, 0, full.len(), &mut slots).is_ok());
        let in_place = format!("{:?}", proto::decode_record_in(&buf, start, end, &mut slots));
        prop_assert_eq!(in_place, format!("{:?}", proto::decode_record(&body)));
    }

    #[test]
    fn address_fields_are_checked_as_the_standard_parsers_read_them(
        text in prop_oneof![
            // Dotted quads near the limits: numbers past 255, leading zeros.
            (
                proptest::array::uniform4(prop_oneof![0u16..12, 250u16..260, 0u16..1000]),
                0u8..32,
            )
                .prop_map(|(n, zeros)| {
                let part = |i: usize| {
                    let zero = if zeros >> i & 1 == 1 { "0" } else { "" };
                    format!("{zero}{}", n[i])
                };
                format!("{}.{}.{}.{}", part(0), part(1), part(2), part(3))
            }),
            "([0-9]{1,4}\\.){3}[0-9]{1,4}",
            "[0-9.]{0,17}",
            "[0-9a-fA-F:.\\[\\]% +-]{0,24}",
            "\\[?[0-9a-f:]{2,20}(\\]:[0-9]{1,6})?",
            "([0-9]{1,3}\\.){3}[0-9]{1,3}(:[0-9+-]{0,6})?",
        ],
        field in 0usize..4,
    ) {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
        let (number, name) = [
            (4, "nas_ip_address"),
            (5, "nas_ipv6_address"),
            (18, "framed_ip_address"),
            (7, "source_address"),
        ][field];
        let well_formed = text.is_empty()
            || match number {
                4 | 18 => text.parse::<Ipv4Addr>().is_ok(),
                5 => text.parse::<Ipv6Addr>().is_ok(),
                _ => text.parse::<IpAddr>().is_ok() || text.parse::<SocketAddr>().is_ok(),
            };
        // Twice in one batch: the second time, a text that passed may come from the
        // batch's memory of addresses it has checked.
        let mut b = Vec::new();
        write::bytes(&mut b, 1, b"addresses");
        for sid in [b"s1", b"s2"] {
            let mut m = Vec::new();
            write::uint(&mut m, 1, 1);
            write::bytes(&mut m, 2, sid);
            write::bytes(&mut m, 6, b"nas1");
            write::bytes(&mut m, number, text.as_bytes());
            let mut e = Vec::new();
            write::bytes(&mut e, 1, &m);
            write::bytes(&mut b, 2, &e);
        }
        let p = Engine::new(NasPolicy::default()).prepare(&b, T0).unwrap();
        prop_assert_eq!(p.quarantine.len(), if well_formed { 0 } else { 2 }, "{:?}", p.quarantine);
        for (_, reason) in &p.quarantine {
            prop_assert!(reason.starts_with(name), "{reason}");
        }
    }

    #[test]
    fn buckets_sum_to_session_totals(recs in proptest::collection::vec(rec_strategy(), 0..40)) {
        for row in run(&[&recs]) {
            prop_assert_eq!((row.2, row.3, u64::from(row.4)), (row.6, row.7, row.8));
        }
    }

    #[test]
    fn splitting_a_batch_anywhere_gives_the_same_result(
        recs in proptest::collection::vec(rec_strategy(), 0..40),
        cut_a in 0usize..40,
        cut_b in 0usize..40,
    ) {
        let (mut a, mut b) = (cut_a.min(recs.len()), cut_b.min(recs.len()));
        if a > b { std::mem::swap(&mut a, &mut b); }
        let whole = run(&[&recs]);
        let split = run(&[&recs[..a], &recs[a..b], &recs[b..]]);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn replaying_a_batch_changes_nothing(recs in proptest::collection::vec(rec_strategy(), 0..40)) {
        let once = run(&[&recs]);
        let twice = run(&[&recs, &recs]);
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn in_order_session_usage_is_its_final_counter(
        steps in proptest::collection::vec((1u32..3600, 0u64..1_000_000_000, 0u64..1_000_000), 1..20)
    ) {
        let mut recs = vec![Rec { status: 1, sid: 0, t: 0, input: None, output: None }];
        let (mut t, mut i, mut o) = (0u32, 0u64, 0u64);
        for (dt, di, dout) in steps {
            t += dt; i += di; o += dout;
            recs.push(Rec { status: 3, sid: 0, t, input: Some(i), output: Some(o) });
        }
        let summary = run(&[&recs]);
        prop_assert_eq!(summary.len(), 1);
        prop_assert_eq!((summary[0].2, summary[0].3, summary[0].4), (i, o, t));
    }
}

#[test]
fn content_key_ignores_transport_fields() {
    let a = record::content_key(1, b"s", 3, Some(10), Some(5), None, 100, None);
    let b = record::content_key(1, b"s", 3, Some(10), Some(5), None, 100, None);
    let c = record::content_key(1, b"s", 3, Some(10), Some(5), Some(0), 100, None);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn first_record_is_accepted_and_creates_one_session() {
    let mut engine = Engine::new(NasPolicy::default());
    let bytes = batch(&[Rec {
        status: 3,
        sid: 0,
        t: 60,
        input: Some(7),
        output: Some(9),
    }]);
    let p = engine.prepare(&bytes, T0).unwrap();
    let out = engine.apply(&p, &bytes);
    assert_eq!(out.outcome, vec![OUTCOME_ACCEPTED]);
    assert_eq!(out.sessions.input_bytes, vec![7]);
    assert_eq!(engine.session_count(), 1);
}

#[test]
fn session_id_survives_compaction_when_other_nases_are_forgotten() {
    fn record(nas: &str, sid: &str, user: &str, t: u64, input: u64) -> Vec<u8> {
        let mut m = Vec::new();
        write::uint(&mut m, 1, 3);
        write::bytes(&mut m, 2, sid.as_bytes());
        write::bytes(&mut m, 3, user.as_bytes());
        write::bytes(&mut m, 6, nas.as_bytes());
        write::uint(&mut m, 10, input);
        write::uint(&mut m, 14, t);
        let mut e = Vec::new();
        write::bytes(&mut e, 1, &m);
        e
    }
    let long_sid = "s".repeat(200);
    let mut engine = Engine::new(NasPolicy::default());
    let mut b = Vec::new();
    for i in 0..20_000 {
        write::bytes(
            &mut b,
            2,
            &record("big", &format!("{long_sid}{i}"), "bob", 60, 1),
        );
    }
    write::bytes(&mut b, 2, &record("small", "keep", "alice", 60, 5));
    let p = engine.prepare(&b, T0).unwrap();
    let out = engine.apply(&p, &b);
    assert_eq!(out.sessions.user_name.get(20_000), "alice");
    assert_eq!(engine.session_count(), 20_001);
    engine.forget_nas(&["big".to_owned()]);
    assert_eq!(engine.session_count(), 1);
    let mut b = Vec::new();
    write::bytes(&mut b, 2, &record("small", "keep", "", 120, 9));
    let p = engine.prepare(&b, T0).unwrap();
    let out = engine.apply(&p, &b);
    assert_eq!(out.outcome, vec![OUTCOME_ACCEPTED]);
    assert_eq!(out.sessions.acct_session_id.get(0), "keep");
    // Identity text is the projection's: a row carries only what this call's records said.
    assert_eq!(out.sessions.user_name.get(0), "");
    assert_eq!(out.sessions.input_bytes, vec![9]);
}

#[test]
fn sweep_forgets_closed_sessions_when_retention_has_passed() {
    let mut engine = Engine::new(NasPolicy::default());
    let recs = [
        Rec {
            status: 2,
            sid: 0,
            t: 60,
            input: Some(1),
            output: Some(1),
        },
        Rec {
            status: 3,
            sid: 1,
            t: 60,
            input: Some(1),
            output: Some(1),
        },
    ];
    let bytes = batch(&recs);
    let p = engine.prepare(&bytes, T0).unwrap();
    engine.apply(&p, &bytes);
    assert_eq!(engine.session_count(), 2);
    let day = 24 * 3600 * US;
    let first = engine.sweep(T0 + day);
    assert_eq!(first.sessions.len(), 1, "the open one is closed as stale");
    assert_eq!(engine.session_count(), 2);
    let later = engine.sweep(T0 + 3 * day);
    assert_eq!(later.sessions.len(), 0);
    assert_eq!(engine.session_count(), 0);
}

#[test]
fn forgotten_id_continues_its_generations_once_its_stored_instance_is_added() {
    let mut engine = Engine::new(NasPolicy::default());
    let first = [
        Rec {
            status: 1,
            sid: 0,
            t: 0,
            input: None,
            output: None,
        },
        Rec {
            status: 2,
            sid: 0,
            t: 60,
            input: Some(5),
            output: Some(7),
        },
    ];
    let bytes = batch(&first);
    let p = engine.prepare(&bytes, T0).unwrap();
    let stored = engine.apply(&p, &bytes).sessions;
    let reuse = [Rec {
        status: 1,
        sid: 0,
        t: 3 * 24 * 3600,
        input: None,
        output: None,
    }];
    let bytes = batch(&reuse);
    let p = engine.prepare(&bytes, T0).unwrap();
    // Held completely: nothing to look up.
    assert!(engine.unknown_sessions(&p, &bytes).is_empty());
    engine.sweep(T0 + 3 * 24 * 3600 * US);
    assert_eq!(engine.session_count(), 0, "closed for over 48 h: forgotten");
    assert_eq!(
        engine.unknown_sessions(&p, &bytes),
        vec![("nas1".to_owned(), "s0".to_owned())]
    );
    engine.add_sessions(&stored).unwrap();
    engine.add_sessions(&stored).unwrap();
    assert_eq!(engine.session_count(), 1, "a held id is not added twice");
    assert!(engine.unknown_sessions(&p, &bytes).is_empty());
    let out = engine.apply(&p, &bytes);
    assert_eq!(out.outcome, vec![OUTCOME_ACCEPTED]);
    assert_eq!(out.sessions.generation, vec![2]);
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Sets an Accounting-Request's authenticator: MD5(header ‖ 16 zeros ‖ attributes ‖ secret).
fn sign(packet: &mut [u8], secret: &[u8]) {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(&packet[..4]);
    h.update([0u8; 16]);
    h.update(&packet[20..]);
    h.update(secret);
    packet[4..20].copy_from_slice(&h.finalize());
}

fn raw_entry(packet: &[u8], source: &str) -> Vec<u8> {
    let mut m = Vec::new();
    write::bytes(&mut m, 1, packet);
    write::bytes(&mut m, 2, source.as_bytes());
    write::timestamp(&mut m, 3, T0);
    let mut e = Vec::new();
    write::bytes(&mut e, 2, &m);
    e
}

#[test]
fn an_accounting_response_answers_each_authenticated_raw_entry_only() {
    // RADIUS.md's golden packet (secret testing123) and its Accounting-Response.
    let golden = unhex(
        "042a005bc0468ee46f4d6f5bdd5eb5ca28d854262806000000032c0a30303030303031410107616c69\
         63650406c00002012e0600000e102a06000003e83406000000012b06ffffffff35060000000237066553\
         ff10290600000000",
    );
    let answer = unhex("052a0014d9e4d3c16591d8cceb1ac30dfbb7658c");
    let mut tampered = golden.clone();
    tampered[30] ^= 1;
    // Authenticated, but with an Acct-Status-Type RADIUS does not define: quarantined, so
    // not recorded, so not answered (RFC 2866 section 4.1).
    let mut unknown_status = golden.clone();
    assert_eq!(&unknown_status[20..26], [40, 6, 0, 0, 0, 3]);
    unknown_status[25] = 16;
    sign(&mut unknown_status, b"testing123");
    let mut engine = Engine::new(NasPolicy::default());
    engine.set_secret("192.0.2.1", b"testing123");
    engine.set_secret("192.0.2.9", b"other");
    let mut b = Vec::new();
    write::bytes(&mut b, 1, b"raw");
    for e in [
        raw_entry(&golden, "192.0.2.1"),
        entry(&Rec {
            status: 3,
            sid: 1,
            t: 60,
            input: Some(1),
            output: Some(1),
        }),
        raw_entry(&golden, "192.0.2.9"),
        raw_entry(&tampered, "192.0.2.1"),
        raw_entry(&unknown_status, "192.0.2.1"),
        raw_entry(&golden, "192.0.2.1"),
    ] {
        write::bytes(&mut b, 2, &e);
    }
    let p = engine.prepare(&b, T0).unwrap();
    let quarantined: Vec<(u32, &str)> = p.quarantine.iter().map(|q| (q.0, q.1.as_str())).collect();
    assert_eq!(quarantined.len(), 3);
    assert_eq!(quarantined[0].0, 2);
    assert_eq!(quarantined[1].0, 3);
    assert_eq!(quarantined[2], (4, "unknown Acct-Status-Type 16"));
    let answered: Vec<(u32, Vec<u8>)> = p.responses.iter().map(|(i, r)| (*i, r.to_vec())).collect();
    assert_eq!(answered, [(0, answer.clone()), (5, answer)]);
}

#[test]
fn a_ledger_replay_decodes_raw_entries_without_their_secret() {
    // `rating rebuild` replays packets that were authenticated when accepted; the secret
    // may have been rotated since, or the source removed.
    let golden = unhex(
        "042a005bc0468ee46f4d6f5bdd5eb5ca28d854262806000000032c0a30303030303031410107616c69\
         63650406c00002012e0600000e102a06000003e83406000000012b06ffffffff35060000000237066553\
         ff10290600000000",
    );
    let mut b = Vec::new();
    write::bytes(&mut b, 1, b"replay");
    write::bytes(&mut b, 2, &raw_entry(&golden, "192.0.2.1"));
    let mut live = Engine::new(NasPolicy::default());
    live.set_secret("192.0.2.1", b"rotated");
    let p = live.prepare(&b, T0).unwrap();
    assert_eq!(
        p.quarantine.len(),
        1,
        "live ingest still checks the authenticator"
    );

    let mut replay = Engine::new(NasPolicy::default());
    replay.set_ledger_replay(true);
    let p = replay.prepare(&b, T0).unwrap();
    assert!(p.quarantine.is_empty());
    assert!(p.responses.is_empty(), "a replay answers no NAS");
    let out = replay.apply(&p, &b);
    assert_eq!(out.outcome, vec![OUTCOME_ACCEPTED]);
    assert_eq!(out.sessions.input_bytes, vec![4_294_968_296]);
    assert_eq!(out.sessions.output_bytes, vec![12_884_901_887]);
}

/// One batch prepared and applied.
fn applied(engine: &mut Engine, bytes: &[u8]) -> ApplyOutput {
    let p = engine.prepare(bytes, T0).unwrap();
    engine.apply(&p, bytes)
}

/// One record of session `s0` on `nas1`: `event_s` and `session_s` apart, so that its
/// implied start is `event_s - session_s`.
fn timed(status: u8, event_s: i64, session_s: u64, input: Option<u64>) -> Vec<u8> {
    session_batch(status, event_s, session_s, input, true)
}

/// One record of session `s0` on `nas1` arriving at `arrival_s` (Acct-Delay-Time 0), with
/// that Event-Timestamp or none (timed by its arrival).
fn session_batch(
    status: u8,
    arrival_s: i64,
    session_s: u64,
    input: Option<u64>,
    event_timestamp: bool,
) -> Vec<u8> {
    let mut m = Vec::new();
    write::uint(&mut m, 1, u64::from(status));
    write::bytes(&mut m, 2, b"s0");
    write::bytes(&mut m, 6, b"nas1");
    if let Some(v) = input {
        write::uint(&mut m, 10, v);
        write::uint(&mut m, 12, v);
    }
    write::uint(&mut m, 14, session_s);
    if event_timestamp {
        write::timestamp(&mut m, 15, T0 + arrival_s * US);
    }
    write::timestamp(&mut m, 23, T0 + arrival_s * US);
    let mut e = Vec::new();
    write::bytes(&mut e, 1, &m);
    let mut b = Vec::new();
    write::bytes(&mut b, 1, b"batch");
    write::bytes(&mut b, 2, &e);
    b
}

#[test]
fn sweep_keeps_an_ids_newest_generation_while_an_older_numbered_one_is_held() {
    let mut engine = Engine::new(NasPolicy::default());
    {
        let mut apply = |bytes: Vec<u8>| applied(&mut engine, &bytes).sessions.generation;
        // Generation 1 begins at 9,900 s (lost Start); generation 2, found after it, began
        // at 0 and stopped at 500 s.
        assert_eq!(apply(timed(3, 10_000, 100, Some(1000))), vec![1]);
        assert_eq!(apply(timed(2, 500, 500, Some(300))), vec![2]);
        // Generation 1 goes on for two days; then a sweep, generation 2 closed for 48 h.
        assert_eq!(apply(timed(3, 200_000, 190_100, Some(2000))), vec![1]);
    }
    let swept = engine.sweep(T0 + 200_100 * US);
    assert!(swept.sessions.is_empty(), "generation 1 is not stale");
    // The id's next session is generation 3: numbered from a held generation 1 alone it
    // would be 2, and its row would overwrite the stored generation 2.
    let bytes = timed(1, 200_200, 0, None);
    let p = engine.prepare(&bytes, T0).unwrap();
    let out = engine.apply(&p, &bytes);
    assert_eq!(out.outcome, vec![OUTCOME_ACCEPTED]);
    let mut written = out.sessions.generation.clone();
    written.sort_unstable();
    assert_eq!(
        written,
        vec![1, 3],
        "the new session, and generation 1 it ends"
    );
}

/// A record of session `s0` on `nas1` without Event-Timestamp: timed by its arrival.
fn by_arrival(status: u8, arrival_s: i64, session_s: u64, input: Option<u64>) -> Vec<u8> {
    session_batch(status, arrival_s, session_s, input, false)
}

#[test]
fn a_copy_resent_unchanged_past_the_tolerance_is_found_by_its_content() {
    let mut engine = Engine::new(NasPolicy::default());
    let mut apply = |bytes: Vec<u8>| applied(&mut engine, &bytes);
    assert_eq!(
        apply(by_arrival(1, 0, 0, None)).outcome,
        vec![OUTCOME_ACCEPTED]
    );
    let original = apply(by_arrival(3, 600, 600, Some(1000)));
    assert_eq!(original.outcome, vec![OUTCOME_ACCEPTED]);
    // 400 s late (the tolerance is 300 s): the instance's last record.
    let copy = apply(by_arrival(3, 1000, 600, Some(1000)));
    assert_eq!(copy.outcome, vec![OUTCOME_DUPLICATE]);
    assert_eq!(copy.sessions.generation, vec![1]);
    assert_eq!(copy.sessions.input_bytes, vec![1000]);
    assert!(copy.copy_candidates.is_empty());
    // After the session's next record the engine no longer holds it: it begins an
    // instance, and names the key that makes it a copy, the original's, for the ledger.
    assert_eq!(
        apply(by_arrival(3, 1200, 1200, Some(3000))).outcome,
        vec![OUTCOME_ACCEPTED]
    );
    let later = apply(by_arrival(3, 1900, 600, Some(1000)));
    assert_eq!(later.sessions.generation, vec![1, 2]);
    assert_eq!(later.copy_candidates, vec![(0, original.content_key[0])]);
    // Other content is not a copy.
    let other = apply(by_arrival(3, 5000, 600, Some(1001)));
    assert!(other
        .copy_candidates
        .iter()
        .all(|&(_, k)| k != original.content_key[0]));
}

#[test]
fn a_stop_delivered_after_an_interim_sent_after_it_still_ends_the_instance() {
    let mut engine = Engine::new(NasPolicy::default());
    let mut apply = |bytes: Vec<u8>| applied(&mut engine, &bytes);
    apply(timed(1, 0, 0, None));
    // Sent after the Stop, delivered before it: the instance's newest record.
    assert_eq!(
        apply(timed(3, 900, 900, Some(9000))).outcome,
        vec![OUTCOME_ACCEPTED]
    );
    let stop = apply(timed(2, 600, 600, Some(1000)));
    assert_eq!(stop.outcome, vec![OUTCOME_ACCEPTED]);
    let s = &stop.sessions;
    assert_eq!(s.open, vec![false]);
    assert_eq!(s.stop_us, vec![T0 + 900 * US], "closed at its last update");
    assert_eq!(s.input_bytes, vec![9000], "the usage counted stays");
    assert_ne!(s.flags[0] & INTERIM_AFTER_STOP, 0);
    assert!(stop.bucket_input_bytes.iter().all(|&b| b == 0));
    // A second copy of the Stop changes nothing.
    let again = apply(timed(2, 600, 600, Some(1000)));
    assert_eq!(again.outcome, vec![OUTCOME_LATE]);
}

#[test]
fn a_reset_delivered_before_the_record_it_follows_counts_as_in_order() {
    // Interim 5000 at 600 s; Stop 300 at 1200 s after a reset (or 0, Lost-Carrier's zeros).
    let totals = |stop_input: u64, stop_first: bool| {
        let mut engine = Engine::new(NasPolicy::default());
        let mut apply = |bytes: Vec<u8>| applied(&mut engine, &bytes);
        apply(timed(1, 0, 0, None));
        let interim = timed(3, 600, 600, Some(5000));
        let stop = timed(2, 1200, 1200, Some(stop_input));
        let (first, second) = if stop_first {
            (stop, interim)
        } else {
            (interim, stop)
        };
        apply(first);
        let last = apply(second);
        assert_eq!(last.outcome, vec![OUTCOME_ACCEPTED]);
        let s = &last.sessions;
        (
            s.input_bytes[0],
            s.flags[0] & (COUNTER_RESET | STOP_REGRESSION),
        )
    };
    for stop_first in [false, true] {
        assert_eq!(
            totals(300, stop_first),
            (5300, COUNTER_RESET),
            "{stop_first}"
        );
        assert_eq!(
            totals(0, stop_first),
            (5000, STOP_REGRESSION),
            "{stop_first}"
        );
    }
}
