"""Core throughput: prepare + apply (dedup, sessions, deltas, hourly buckets) on one core.

Run: pytest benchmarks/bench_core.py --benchmark-only -s
Each case preloads N open sessions, then times batches of Interim-Updates that each touch
distinct sessions with new counters. The pure-Python reference runs on the same bytes in
the same run, alternately with the core on the same batches, and the median of the pairs'
ratios is reported, three ways: the reference reading the bytes with its own decoder
(`decode_batch`: the same input and the same work as the core's prepare + apply), with the
generated protobuf classes' C parser instead, and given the records already decoded.
Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

import rating_core as rc
from isp_rating.v1 import usage_pb2
from tests.reference.accounting_wire import decode_batch, rec_from_message
from tests.reference.usage_reference import Reference, Session

US = 1_000_000
T0 = 1_700_000_000 * US
M32 = (1 << 32) - 1
NAS_COUNT = 16
PAIRS = 5  # core batch / reference sample pairs timed for the ratio


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def ts(field: int, us: int) -> bytes:
    seconds, micros = divmod(us, US)
    return ld(
        field, b"\x08" + varint(seconds) + (b"\x10" + varint(micros * 1000) if micros else b"")
    )


def nas(i: int) -> str:
    return f"bng-{i % NAS_COUNT:02d}"


def sid(i: int) -> str:
    return f"{i:016X}"


def mac(i: int) -> str:
    return "02-00-" + "-".join(f"{i >> shift & 255:02X}" for shift in (24, 16, 8, 0))


def prefix(i: int, status: int) -> bytes:
    """Status, session id, user, NAS-Identifier, calling station: fixed per session."""
    return (
        b"\x08" + varint(status) + ld(2, sid(i).encode()) + ld(3, f"user{i}@isp.example".encode())
        + ld(6, nas(i).encode()) + ld(21, mac(i).encode())
    )  # fmt: skip


REF_SAMPLE = 20_000  # records of each batch the reference runs on


def interim_batch(first: int, count: int, pool: int, rnd: int) -> tuple[bytes, bytes]:
    """Interim-Updates for sessions first..first+count (mod pool), round `rnd`: the batch,
    and a batch of its first REF_SAMPLE records for the reference."""
    parts = [ld(1, b"bench")]
    for k in range(first, first + count):
        i = k % pool
        lap = rnd + k // pool
        t = 600 * (lap + 1)
        inp = lap * 7_000_000 + i
        out = lap * 90_000_000 + i
        at = T0 + t * US
        body = (
            prefix(i, 3) + b"\x50" + varint(inp & M32) + b"\x58" + varint(inp >> 32)
            + b"\x60" + varint(out & M32) + b"\x68" + varint(out >> 32) + b"\x70" + varint(t)
            + ts(15, at) + ts(23, at)
        )  # fmt: skip
        parts.append(ld(2, ld(1, body)))
    return b"".join(parts), b"".join(parts[: REF_SAMPLE + 1])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def preload(pool: int) -> tuple[rc.Engine, int]:
    """An engine with `pool` open sessions (applied as Starts); returns it and its RSS cost."""
    gc.collect()
    before = rss_bytes()
    engine = rc.Engine()
    chunk = 100_000
    for lo in range(0, pool, chunk):
        entries = [
            ld(2, ld(1, prefix(i, 1) + b"\x70\x00" + ts(15, T0) + ts(23, T0)))
            for i in range(lo, min(pool, lo + chunk))
        ]
        engine.apply(engine.prepare(ld(1, b"load") + b"".join(entries), T0))
        del entries
    gc.collect()
    return engine, rss_bytes() - before


def reference_for(pool: int) -> Reference:
    ref = Reference()
    for i in range(pool):
        s = Session(
            nas(i), sid(i), 1, f"user{i}@isp.example", "", "", start_us=T0, last_update_us=T0
        )
        ref.chains[(nas(i), sid(i))] = [s]
    return ref


RESULTS: dict[str, dict[str, Any]] = {}


def run_case(benchmark: Any, pool: int, batch_size: int) -> None:
    engine, engine_rss = preload(pool)
    assert engine.session_count() == pool
    # What the engine holds (capacities, per-call scratch included), next to the RSS growth
    # (which also keeps the allocator's retained batch buffers of the preload).
    engine_heap = engine.heap_bytes()
    state = {"round": 0, "next": 0}

    def setup() -> tuple[tuple[bytes], dict[str, Any]]:
        data, _ = interim_batch(state["next"], batch_size, pool, state["round"])
        state["next"] += batch_size
        return (data,), {}

    def step(data: bytes) -> rc.ApplyResult:
        return engine.apply(engine.prepare(data, T0))

    result = benchmark.pedantic(step, setup=setup, rounds=7, iterations=1, warmup_rounds=1)
    assert int((result.outcome == rc.OUTCOME_ACCEPTED).sum()) == batch_size
    assert int(result.bucket_input_bytes.sum()) > 0
    median = benchmark.stats.stats.median
    core_rate = batch_size / median

    # The same bytes through the pure-Python reference (the first REF_SAMPLE records of
    # each batch), in pairs with the core on the whole batch: the machine is shared, so
    # each ratio compares timings taken seconds apart, and the median of the pairs is
    # reported. The reference's decode and its rating are timed apart; each record is
    # rated once (the C parser's records, equal to the decoder's, are checked, not rated).
    ref = reference_for(pool)
    pairs: list[tuple[float, float, float, float]] = []  # core, decode, C parse, rating (s)
    for _ in range(PAIRS):
        data, sample = interim_batch(state["next"], batch_size, pool, state["round"])
        state["next"] += batch_size
        started = time.perf_counter()
        engine.apply(engine.prepare(data, T0))
        core_s = (time.perf_counter() - started) / batch_size
        started = time.perf_counter()
        recs = decode_batch(sample)
        decode_s = (time.perf_counter() - started) / len(recs)
        started = time.perf_counter()
        parsed = [
            rec_from_message(e.decoded)
            for e in usage_pb2.StreamAccountingRequest.FromString(sample).entries
        ]
        parse_s = (time.perf_counter() - started) / len(recs)
        assert parsed == recs
        started = time.perf_counter()
        for r in recs:
            ref.record(r, T0)
        pairs.append((core_s, decode_s, parse_s, (time.perf_counter() - started) / len(recs)))

    def ratio(reference_s: Callable[[tuple[float, float, float, float]], float]) -> float:
        return statistics.median(reference_s(p) / p[0] for p in pairs)

    ratios = sorted(round((p[1] + p[3]) / p[0], 1) for p in pairs)
    ref_rate = 1 / statistics.median(p[1] + p[3] for p in pairs)
    data, _ = interim_batch(state["next"], batch_size, pool, state["round"])
    # Including the Python-side materialization of every column the service reads.
    started = time.perf_counter()
    res = engine.apply(engine.prepare(data, T0))
    touch: list[Callable[[], object]] = [
        lambda: res.outcome, lambda: res.content_key, lambda: res.entry_bytes,
        lambda: res.sessions.acct_session_id, lambda: res.sessions.user_name,
        lambda: res.sessions.input_bytes, lambda: res.bucket_input_bytes,
    ]  # fmt: skip
    for f in touch:
        f()
    full_rate = batch_size / (time.perf_counter() - started)
    RESULTS[f"{pool}"] = {
        "pool": pool,
        "batch": batch_size,
        "median_s": median,
        "core_rate": core_rate,
        "with_columns_rate": full_rate,
        "reference_rate": ref_rate,
        "ratio": ratio(lambda p: p[1] + p[3]),
        "ratios": ratios,
        "ratio_reference_with_c_parser": ratio(lambda p: p[2] + p[3]),
        "ratio_reference_given_records": ratio(lambda p: p[3]),
        "reference_decode_us": statistics.median(p[1] for p in pairs) * 1e6,
        "reference_c_parse_us": statistics.median(p[2] for p in pairs) * 1e6,
        "reference_rating_us": statistics.median(p[3] for p in pairs) * 1e6,
        "rss_mib": engine_rss / 2**20,
        "rss_mib_per_million": engine_rss / 2**20 * 1_000_000 / pool,
        "heap_mib_per_million": engine_heap / 2**20 * 1_000_000 / pool,
    }
    benchmark.extra_info.update(RESULTS[f"{pool}"])
    print(f"\n{pool} sessions: {RESULTS[f'{pool}']}")


@pytest.mark.benchmark(group="core")
def test_core_throughput_with_10k_open_sessions(benchmark: Any) -> None:
    run_case(benchmark, 10_000, 200_000)


@pytest.mark.benchmark(group="core")
def test_core_throughput_with_1m_open_sessions(benchmark: Any) -> None:
    run_case(benchmark, 1_000_000, 200_000)
