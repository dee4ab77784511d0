"""RADIUS decoding: the golden packet, the real capture, and arbitrary bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rating_core as rc
from tests.reference.accounting_wire import (
    accounting_request,
    batch,
    radius_attr,
    radius_int,
    raw_entry,
)

GOLDEN = bytes.fromhex(
    "042a005bc0468ee46f4d6f5bdd5eb5ca28d854262806000000032c0a30303030303031410107616c6963650406c00002012e0600000e10"
    "2a06000003e83406000000012b06ffffffff35060000000237066553ff10290600000000"
)
GOLDEN_RESPONSE = bytes.fromhex("052a0014d9e4d3c16591d8cceb1ac30dfbb7658c")
PCAP = Path(__file__).resolve().parents[2].parent / "shared/radius/wba_dl_5gb.pcap"


def test_golden_packet_decodes_to_stated_values_when_secret_is_right() -> None:
    d = rc.decode_radius(GOLDEN, b"testing123")
    assert d["status_type"] == 3
    assert d["user_name"] == "alice"
    assert d["acct_session_id"] == "0000001A"
    assert d["nas_ip_address"] == "192.0.2.1"
    assert d["session_time_s"] == 3600
    assert d["input_bytes"] == 4_294_968_296
    assert d["output_bytes"] == 12_884_901_887
    assert d["event_timestamp"] == 1_700_003_600
    assert d["delay_time_s"] == 0


def test_golden_response_matches_byte_for_byte_when_acknowledged() -> None:
    assert rc.accounting_response(GOLDEN, b"testing123") == GOLDEN_RESPONSE


def test_decode_raises_naming_authenticator_when_secret_is_wrong() -> None:
    with pytest.raises(rc.RatingError, match="Authenticator"):
        rc.decode_radius(GOLDEN, b"wrong")


def test_golden_packet_is_rated_when_sent_raw_through_the_engine() -> None:
    engine = rc.Engine()
    engine.set_secret("192.0.2.1", b"testing123")
    result = engine.apply(
        engine.prepare(batch([raw_entry(GOLDEN, "192.0.2.1")]), 1_700_003_600_000_000)
    )
    assert result.outcome.tolist() == [rc.OUTCOME_ACCEPTED]
    s = result.sessions
    assert s.nas_key == ["192.0.2.1"]
    assert int(s.input_bytes[0]) == 4_294_968_296
    assert int(s.output_bytes[0]) == 12_884_901_887
    assert "lost_start" in rc.flag_names(int(s.flags[0]))


def test_raw_packet_is_quarantined_when_no_secret_is_known_for_its_source() -> None:
    engine = rc.Engine()
    result = engine.apply(engine.prepare(batch([raw_entry(GOLDEN, "192.0.2.9")]), 0))
    assert result.outcome.tolist() == [rc.OUTCOME_QUARANTINED]
    assert "no shared secret" in result.quarantine[0][1]


def test_raw_packet_is_quarantined_when_authenticator_is_bad() -> None:
    engine = rc.Engine()
    engine.set_secret("192.0.2.1", b"other")
    result = engine.apply(engine.prepare(batch([raw_entry(GOLDEN, "192.0.2.1")]), 0))
    assert result.quarantine[0][0] == 0
    assert "Authenticator" in result.quarantine[0][1]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:50], "shorter than its Length"),
        (lambda p: p[:2] + struct.pack("!H", 19) + p[4:], "outside 20..4096"),
        (lambda p: p[:2] + struct.pack("!H", 5000) + p[4:], "outside 20..4096"),
        (lambda p: p + b"\x00\x00\x00", None),
    ],
)
def test_framing_rules_hold_when_length_and_datagram_disagree(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    packet = mutate(GOLDEN)
    if reason is None:
        assert rc.decode_radius(packet, b"testing123")["user_name"] == "alice"
    else:
        with pytest.raises(rc.RatingError, match=reason):
            rc.decode_radius(packet, None)


def _packet(attrs: bytes) -> bytes:
    return accounting_request(attrs, b"s3cret")


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        (radius_attr(44, b"s1") + radius_attr(42, b"\x00\x01"), "wrong length"),
        (radius_attr(44, b"s1") + radius_int(42, 5), "missing Acct-Status-Type"),
        (radius_int(40, 9) + radius_attr(44, b"s1"), "Acct-Status-Type 9 (Tunnel-Start) is not"),
        (radius_int(40, 4) + radius_attr(44, b"s1"), "unknown Acct-Status-Type 4"),
        (radius_int(40, 3) + radius_attr(44, b"s1") + b"\x2a\x01", "bad length"),
        (radius_int(40, 3) + radius_attr(44, b"s1") + b"\x2a\x09\x00\x00", "bad length"),
        (radius_int(40, 3) + radius_int(42, 1) + radius_int(42, 2), "repeated"),
        # Framed-IPv6-Prefix: a /129 names its Prefix-Length; 4 octets cannot hold a /64.
        (
            radius_int(40, 3) + radius_attr(44, b"s1") + radius_attr(97, b"\x00\x81" + bytes(16)),
            "attribute 97 has a Prefix-Length of 129 (over 128)",
        ),
        (
            radius_int(40, 3) + radius_attr(44, b"s1") + radius_attr(97, b"\x00\x40" + bytes(4)),
            "attribute 97 has a value of 6 bytes (wrong length)",
        ),
        # Message-Authenticator (RFC 3579): 16 octets, at most once.
        (
            radius_int(40, 3) + radius_attr(44, b"s1") + radius_attr(80, bytes(15)),
            "attribute 80 has a value of 15 bytes (wrong length)",
        ),
        (
            radius_int(40, 3) + radius_attr(44, b"s1") + radius_attr(80, bytes(16)) * 2,
            "attribute 80 repeated",
        ),
    ],
)
def test_malformed_packet_is_quarantined_with_reason_when_sent_raw(
    attrs: bytes, reason: str
) -> None:
    packet = _packet(attrs)
    engine = rc.Engine()
    engine.set_secret("203.0.113.5", b"s3cret")
    result = engine.apply(engine.prepare(batch([raw_entry(packet, "203.0.113.5")]), 0))
    assert result.outcome.tolist() == [rc.OUTCOME_QUARANTINED]
    assert reason in result.quarantine[0][1]
    assert result.content_key[0].tobytes() == bytes(16)
    assert result.nas_index.tolist() == [-1]


def test_raw_packet_with_a_message_authenticator_is_rated() -> None:
    attrs = (
        radius_int(40, 3) + radius_attr(44, b"s1") + radius_int(46, 60) + radius_int(42, 5)
        + radius_attr(80, bytes(range(16))) + radius_int(43, 7)
    )  # fmt: skip
    engine = rc.Engine()
    engine.set_secret("203.0.113.5", b"s3cret")
    result = engine.apply(engine.prepare(batch([raw_entry(_packet(attrs), "203.0.113.5")]), 0))
    assert result.quarantine == []
    assert (int(result.sessions.input_bytes[0]), int(result.sessions.output_bytes[0])) == (5, 7)


@pytest.mark.skipif(not PCAP.exists(), reason="shared capture not present")
def test_pcap_totals_match_source_when_replayed_raw() -> None:
    packets, sources, times, truncated_at, incomplete = rc.read_pcap(PCAP.read_bytes())
    assert truncated_at is None
    assert incomplete == {"missing": 0, "conflicting": 0, "evicted": 0, "cut": 0}
    assert len(packets) == 179
    assert set(sources) == {"192.168.123.1"}
    engine = rc.Engine()
    engine.set_secret("192.168.123.1", b"secret")
    entries = [raw_entry(p, s, int(t)) for p, s, t in zip(packets, sources, times, strict=True)]
    result = engine.apply(engine.prepare(batch(entries), 0))
    assert result.quarantine == []
    s = result.sessions
    assert len(s) == 1
    assert s.nas_key == ["192.168.123.1"]
    assert int(s.input_bytes[0]) == 147_699_750
    assert int(s.output_bytes[0]) == 5_682_218_308
    assert int(s.session_time_s[0]) == 1_773
    assert int(s.terminate_cause[0]) == 1
    assert not bool(s.open[0])
    assert "clock_skew" in rc.flag_names(int(s.flags[0]))
    assert int(result.bucket_input_bytes.sum()) == 147_699_750
    assert int(result.bucket_output_bytes.sum()) == 5_682_218_308
    assert int(result.bucket_session_s.sum()) == 1_773


@pytest.mark.skipif(not PCAP.exists(), reason="shared capture not present")
def test_pcap_replay_counts_nothing_twice_when_every_packet_is_retransmitted() -> None:
    packets, sources, times, _, _ = rc.read_pcap(PCAP.read_bytes())
    engine = rc.Engine()
    engine.set_secret("192.168.123.1", b"secret")
    entries = [raw_entry(p, s, int(t)) for p, s, t in zip(packets, sources, times, strict=True)]
    first = engine.apply(engine.prepare(batch(entries), 0))
    again = engine.apply(engine.prepare(batch(entries), 0))
    assert set(again.outcome.tolist()) <= {rc.OUTCOME_DUPLICATE, rc.OUTCOME_LATE}
    assert int(again.bucket_input_bytes.sum()) == 0
    assert int(again.sessions.input_bytes[0]) == int(first.sessions.input_bytes[0])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=16))
def test_decoder_never_crashes_when_given_arbitrary_bytes(data: bytes, secret: bytes) -> None:
    try:
        d = rc.decode_radius(data, secret or None)
    except rc.RatingError:
        return
    # Whatever decodes must be self-consistent with its framing.
    length = int(str(d["length"]))
    assert length <= len(data)
    assert length == int.from_bytes(data[2:4], "big")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_prepare_never_crashes_when_batch_bytes_are_arbitrary(data: bytes) -> None:
    engine = rc.Engine()
    try:
        prepared = engine.prepare(data, 0)
    except rc.RatingError:
        return
    result = engine.apply(prepared)
    assert len(result.outcome) == len(prepared)
    assert len(result.entry_bytes) == len(prepared)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 200))
def test_raw_decoder_never_misreads_when_attribute_bytes_are_arbitrary(
    attrs: bytes, cut: int
) -> None:
    packet = accounting_request(attrs, b"k")[: 20 + cut]
    try:
        d = rc.decode_radius(packet, None)
    except rc.RatingError:
        return
    # Accepted only if the TLVs fill Length exactly and the counters are 4 bytes wide.
    body = packet[20 : int(str(d["length"]))]
    pos = 0
    while pos < len(body):
        assert body[pos + 1] >= 2
        if body[pos] in (40, 42, 43, 46, 52, 53):
            assert body[pos + 1] == 6
        pos += body[pos + 1]
    assert pos == len(body)


_ATTR = st.one_of(
    st.tuples(st.sampled_from([40, 41, 42, 43, 46, 49, 52, 53, 55]), st.integers(0, 2**32 - 1)).map(
        lambda kv: radius_int(kv[0], kv[1])
    ),
    st.tuples(st.sampled_from([1, 31, 32, 44]), st.binary(min_size=1, max_size=20)).map(
        lambda kv: radius_attr(kv[0], kv[1])
    ),
    st.tuples(st.sampled_from([4, 8, 25, 42, 95]), st.binary(max_size=18)).map(
        lambda kv: radius_attr(kv[0], kv[1])
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ATTR, max_size=12))
def test_engine_and_decoder_agree_when_packets_are_random_but_signed(attrs: list[bytes]) -> None:
    body = b"".join(attrs)
    if 20 + len(body) > 4096:
        return
    packet = accounting_request(body, b"k")
    try:
        decoded = rc.decode_radius(packet, b"k")
    except rc.RatingError:
        decoded = None
    engine = rc.Engine()
    engine.set_secret("203.0.113.9", b"k")
    result = engine.apply(engine.prepare(batch([raw_entry(packet, "203.0.113.9", 10**15)]), 0))
    outcome = int(result.outcome[0])
    if decoded is None:
        assert outcome == rc.OUTCOME_QUARANTINED
        return
    status, sid = decoded["status_type"], decoded["acct_session_id"]
    if status not in (1, 2, 3, 7, 8) or (status in (1, 2, 3) and not sid):
        assert outcome == rc.OUTCOME_QUARANTINED
        return
    assert outcome == rc.OUTCOME_ACCEPTED
    if status in (1, 2, 3):
        s = result.sessions
        assert int(s.hwm_input[0]) == (decoded["input_bytes"] or 0)
        assert int(s.hwm_output[0]) == (decoded["output_bytes"] or 0)
