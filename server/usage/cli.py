"""Usage commands of `rating`: collect RADIUS over UDP, replay a pcap or detail file, list
sessions, sweep, rebuild, register and list NAS clients, list and purge the quarantine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import uuid
import zoneinfo
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2, usage_pb2_grpc
from server.client import add_client_arguments, auth_metadata, client_channel, tenant_id
from server.usage.collector import UdpCollector, parse_listen
from server.usage.detail import parse_detail
from server.usage.repository import POLICY_COLUMNS
from server.usage.service import UNAUTHENTICATED
from server.validation import I32_MAX, to_timestamp

DEFAULT_BATCH = 1000
INSTANT = "ISO 8601 instant with an offset or Z, e.g. 2026-11-21T12:00:00Z"


def add_commands(subparsers: Any) -> None:
    """Adds replay, collect, sessions, sweep, nas, quarantine and rebuild to the `rating`
    parser."""
    replay = subparsers.add_parser(
        "replay",
        help="stream the accounting requests of a pcap or a FreeRADIUS detail file",
    )
    add_client_arguments(replay)
    replay.add_argument(
        "file",
        type=Path,
        help="pcap or pcapng capture (UDP 1813/1646) or FreeRADIUS detail file",
    )
    replay.add_argument(
        "--format",
        choices=("auto", "pcap", "detail"),
        default="auto",
        help="file format (auto: pcap or pcapng by its magic number, else detail)",
    )
    replay.add_argument(
        "--secret", help="shared secret of every source address (required for a capture)"
    )
    replay.add_argument(
        "--detail-tz",
        default="UTC",
        help="IANA zone of detail header dates, used only for records without Timestamp",
    )
    replay.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH)
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.set_defaults(handler=replay_command)

    collect = subparsers.add_parser(
        "collect",
        help="receive RADIUS Accounting-Requests over UDP, stream them to the server and"
        " answer each NAS once its record is durable",
    )
    add_client_arguments(collect)
    collect.add_argument(
        "--listen", default=":1813", help="UDP HOST:PORT to receive on (default %(default)s)"
    )
    collect.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH)
    collect.add_argument(
        "--flush-ms",
        type=_non_negative,
        default=20,
        help="send a partial batch this long after its first request (default %(default)s)",
    )
    collect.add_argument(
        "--stats-s",
        type=_non_negative,
        default=10,
        help="print counters to stderr this often (0: only at exit; default %(default)s)",
    )
    collect.set_defaults(handler=collect_command)

    sessions = subparsers.add_parser("sessions", help="list session instances")
    add_client_arguments(sessions)
    sessions.add_argument("--user", type=_filter, help="User-Name")
    sessions.add_argument("--nas", type=_filter, help="NAS key")
    sessions.add_argument("--subscription", type=_filter, help="subscription id")
    sessions.add_argument("--open", action="store_true", help="open sessions only")
    sessions.add_argument("--json", action="store_true", help="one JSON array (default: lines)")
    sessions.set_defaults(handler=sessions_command)

    sweep = subparsers.add_parser("sweep", help="close stale sessions as of a time")
    add_client_arguments(sweep)
    sweep.add_argument(
        "--as-of",
        required=True,
        type=parse_instant,
        help=f"{INSTANT} (a time without one is refused: it would be read in some zone)",
    )
    sweep.set_defaults(handler=sweep_command)

    nas = subparsers.add_parser("nas", help="NAS clients: register a secret and policy, list")
    nas_sub = nas.add_subparsers(dest="nas_command", required=True)
    nas_set = nas_sub.add_parser(
        "set",
        help="register or change the client at a source address (prints it as JSON); only"
        " the options given are written",
        description="Registers or changes the client at a source address and prints it as"
        " JSON. Only the options given are written: what the command line leaves out (the"
        " client's secret and NAS key, each policy option of that NAS key) keeps its stored"
        " value. A new client needs --secret; its NAS key is the address unless --nas-key"
        " names one, and a NAS nothing configured yet has the default of every policy option"
        " not given.",
    )
    add_client_arguments(nas_set)
    nas_set.add_argument("source_address", help="the packets' source address")
    nas_set.add_argument(
        "--secret",
        type=_secret,
        # An empty variable counts as unset (the default: None is not run through _secret).
        default=os.environ.get("RATING_NAS_SECRET") or None,
        help="shared secret (env RATING_NAS_SECRET keeps it out of the process list);"
        " required for a new client, else the stored one is kept",
    )
    nas_set.add_argument(
        "--nas-key",
        help="NAS-Identifier or NAS-IP(v6)-Address the device sends, whose policy the options"
        " set (a new client's default: the address; '' points a client back at its address)",
    )
    nas_set.add_argument(
        "--swap-direction",
        action=argparse.BooleanOptionalAction,
        help="the device reports input as download (--no-swap-direction: it does not)",
    )
    nas_set.add_argument(
        "--infer-wrap",
        action=argparse.BooleanOptionalAction,
        help="the device sends no gigawords: a counter going down is a 32-bit wrap"
        " (--no-infer-wrap: a counter reset)",
    )
    for option, meaning in (
        ("--interim-interval-s", "expected seconds between Interim-Updates (0: the default)"),
        ("--stale-multiplier", "k: silent for k intervals + grace means stale (0: the default)"),
        ("--grace-s", "seconds of grace after k intervals (0: none)"),
        (
            "--clock-skew-tolerance-s",
            "Event-Timestamp trusted within this of arrival - delay (0: the default)",
        ),
    ):
        nas_set.add_argument(option, type=_policy_value, help=meaning)
    nas_set.set_defaults(handler=nas_set_command)
    nas_list = nas_sub.add_parser("list", help="NASes with their policy and clock-skew flags")
    add_client_arguments(nas_list)
    nas_list.add_argument("--flagged", action="store_true", help="only NASes with a flag")
    nas_list.add_argument("--json", action="store_true", help="one JSON array (default: lines)")
    nas_list.set_defaults(handler=nas_list_command)

    quarantine = subparsers.add_parser(
        "quarantine",
        help="list quarantined (malformed) entries, newest first; `quarantine purge` deletes"
        " old ones",
        description="Lists the entries quarantined as malformed, newest first, one JSON object"
        " per line (--json: one array), with their bytes (the AccountingEntry) in hex.",
    )
    add_client_arguments(quarantine)
    quarantine.add_argument(
        "--since",
        type=parse_instant,
        metavar="TIME",
        help=f"only entries received at or after this {INSTANT}",
    )
    quarantine.add_argument(
        "--until",
        type=parse_instant,
        metavar="TIME",
        help=f"only entries received before this {INSTANT}",
    )
    quarantine.add_argument("--json", action="store_true", help="one JSON array (default: lines)")
    quarantine.set_defaults(handler=quarantine_command)
    quarantine_sub = quarantine.add_subparsers(
        dest="quarantine_command", metavar="{purge}", help="leave it out to list"
    )
    purge = quarantine_sub.add_parser(
        "purge",
        help="delete the entries received before a time (prints how many)",
        description="Deletes the tenant's quarantined entries received strictly before"
        " --before and prints how many as JSON; `rating quarantine --until` with the same"
        " time lists exactly those.",
    )
    add_client_arguments(purge, inherited=True)
    purge.add_argument(
        "--before",
        required=True,
        type=parse_instant,
        metavar="TIME",
        help=f"delete the entries received before this {INSTANT}",
    )
    purge.set_defaults(handler=quarantine_purge_command)

    rebuild = subparsers.add_parser(
        "rebuild", help="rebuild sessions and buckets by replaying the ledger (server side)"
    )
    rebuild.add_argument("--database-url", help="SQLAlchemy URL (env RATING_DATABASE_URL)")
    rebuild.add_argument("--data-dir", help="embedded data directory (env RATING_DATA_DIR)")
    rebuild.add_argument("--tenant", type=tenant_id, help="one tenant id (default: all)")
    rebuild.set_defaults(handler=rebuild_command)


def _timestamp_us(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def parse_instant(text: str) -> dt.datetime:
    """An argparse type: an ISO 8601 instant with an offset or Z, as aware UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} has no offset: add Z or +HH:MM (times are aware UTC)"
            )
        return value.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 instant, e.g. 2026-11-21T12:00:00Z"
        ) from None


PCAP_MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x0a\x0d\x0d\x0a",  # pcapng: a Section Header Block, the same in either byte order
)


def is_pcap(data: bytes) -> bool:
    """Whether the bytes start as a classic pcap or a pcapng capture."""
    return data[:4] in PCAP_MAGICS


# The bytes read to tell a capture from a detail file (not_detail looks at no more).
HEAD_BYTES = 65536


def read_head(path: Path) -> bytes:
    """The first HEAD_BYTES of a file (a capture is not read whole)."""
    with path.open("rb") as file:
        return file.read(HEAD_BYTES)


def not_detail(data: bytes) -> str | None:
    """Why bytes that are not a capture cannot be a detail file either, or None."""
    if b"\0" in data[:65536]:
        return "neither a pcap or pcapng capture nor a FreeRADIUS detail file (text)"
    return None


# How `rating replay` names the reasons a fragmented datagram was not reassembled.
INCOMPLETE_REASONS = {
    "missing": "missing a fragment",
    "conflicting": "with conflicting fragments",
    "evicted": "over the reassembly memory limit",
}


def raw_entries(
    packets: Sequence[bytes], sources: Sequence[str], times: Sequence[int]
) -> list[usage_pb2.AccountingEntry]:
    """Raw entries of captured requests, with their capture times (µs) as arrival."""
    return [
        usage_pb2.AccountingEntry(
            raw=usage_pb2.RawAccountingPacket(
                packet=packet, source_address=source, arrival_time=_timestamp_us(int(t))
            )
        )
        for packet, source, t in zip(packets, sources, times, strict=True)
    ]


def replay_run() -> str:
    """A name for one run of `rating replay`, in its batch ids (`replay-<run>-<n>`): the
    ledger and quarantine rows keep the batch id, so an entry can be traced to the run
    that sent it. UTC time to the second, and a random part for runs in the same second."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def batches_of(
    entries: Sequence[usage_pb2.AccountingEntry], size: int, run: str
) -> list[usage_pb2.StreamAccountingRequest]:
    """One batch per `size` entries, in order, with ids a resend repeats."""
    size = max(1, size)
    return [
        usage_pb2.StreamAccountingRequest(
            batch_id=f"replay-{run}-{start // size}", entries=entries[start : start + size]
        )
        for start in range(0, len(entries), size)
    ]


class WrongSecretError(Exception):
    """`--secret` verifies none of the requests of some source of the capture: nothing was
    set or sent."""

    def __init__(self, unverified: list[tuple[str, int]]) -> None:
        named = ", ".join(
            f"{checked} request{'s' if checked > 1 else ''} from {source}"
            for source, checked in unverified[:3]
        )
        more = f" and {len(unverified) - 3} more sources" if len(unverified) > 3 else ""
        super().__init__(
            f"--secret verifies none of the {named}{more} (their Request Authenticators):"
            " it is not their secret; no secret was set and nothing was sent"
        )


class CaptureChangedError(Exception):
    """The capture read while streaming was not the one scanned before (rewritten, or
    unreadable): part of it may have been sent."""


async def capture_batches(
    path: Path, length: int, size: int, scanned: int, run: str
) -> AsyncIterator[usage_pb2.StreamAccountingRequest]:
    """The capture's requests as batches of `size` (ids as batches_of gives them), read a
    chunk at a time with the GIL released: the memory held is a window of the file, the
    fragments being reassembled and one batch, whatever the file's size. Raises
    CaptureChangedError, after the batches before it, when the read fails or finds more
    requests than the scan."""
    import rating_core as core

    size = max(1, size)
    index = sent = 0
    try:
        reader = await asyncio.to_thread(core.CaptureReader, path, length)
        while chunk := await asyncio.to_thread(reader.next_chunk, size):
            packets, sources, times = chunk
            sent += len(packets)
            if sent > scanned:
                break
            yield usage_pb2.StreamAccountingRequest(
                batch_id=f"replay-{run}-{index}",
                entries=raw_entries(packets, sources, times.tolist()),
            )
            index += 1
    except (OSError, core.RatingError) as error:
        raise CaptureChangedError(
            f"reading the capture again after {sent} requests: {error}"
        ) from None
    if sent != scanned:
        raise CaptureChangedError(
            f"the capture changed since it was scanned: {sent} requests read again, not {scanned}"
        )


async def stream_batches(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    batches: Iterable[usage_pb2.StreamAccountingRequest]
    | AsyncIterable[usage_pb2.StreamAccountingRequest],
    progress: Any = None,
    *,
    records: int,
    total: int,
) -> dict[str, int]:
    """Streams the batches (`total` of them, holding `records` entries); sums the acks (each
    one sent after its batch committed). An error raised by the batches is raised once the
    call has ended on the batches before it."""
    summary = {"records": records, "accepted": 0, "duplicate": 0, "late": 0, "quarantined": 0}
    failure: list[Exception] = []

    async def requests() -> AsyncIterator[usage_pb2.StreamAccountingRequest]:
        try:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield batch
            else:
                for batch in batches:
                    yield batch
        except CaptureChangedError as error:
            failure.append(error)

    call = stub.StreamAccounting(requests(), metadata=metadata)
    done = 0
    reasons: Counter[str] = Counter()
    async for ack in call:
        for name in ("accepted", "duplicate", "late", "quarantined"):
            summary[name] += getattr(ack, name)
        reasons.update(q.reason for q in ack.quarantined_records)
        done += 1
        if progress is not None:
            print(f"batch {done}/{total}: {ack.batch_id}", file=progress)
    if progress is not None:
        report_quarantine(reasons, progress)
    if failure:
        raise failure[0]
    return summary


def report_quarantine(reasons: Counter[str], out: Any) -> None:
    """One stderr line per quarantine reason, most frequent first: kept by the server
    (`rating quarantine` lists them), not counted as usage."""
    for reason, count in reasons.most_common():
        hint = "; is --secret right?" if reason.startswith(UNAUTHENTICATED) else ""
        print(f"quarantined {count}: {reason}{hint}", file=out)


async def replay(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    path: Path,
    secret: str,
    batch_size: int = DEFAULT_BATCH,
    progress: Any = None,
) -> dict[str, int]:
    """Sets the secret of every source address of a pcap or pcapng capture, then streams it.

    A capture with a source none of whose requests `secret` verifies (when some could be
    checked) raises WrongSecretError before a secret is set or a request sent.

    The capture is read twice, a chunk at a time (its memory does not grow with the file):
    a scan reads all of it, keeping only the count and distinct sources of its requests, so
    that a file the reader refuses (RatingError) is refused before anything is sent, and
    the truncation and incomplete datagrams are known; then the secrets are set, and the
    requests are read again and streamed batch by batch. Only the bytes the file had when
    scanned are read again; a second read that differs raises CaptureChangedError after the
    batches before the difference were stored.

    Only the secret is written: a client registered before keeps its NAS key, and its NAS
    its policy (a new client's NAS key is its address, with the default policy). A last
    record cut short (a capture killed mid-write) is reported on `progress` and counted as
    `truncated`; every complete record before it is sent. Datagrams that may hold requests
    and were cut short by the capture's snaplen, or fragmented and could not be reassembled,
    are not sent: they are reported and counted as `incomplete_datagrams`.
    """
    import rating_core as core

    scan = await asyncio.to_thread(core.CaptureReader, path)
    count, sources, unverified = await asyncio.to_thread(scan.scan, secret.encode())
    if unverified:
        # Setting it would replace the secret a source's live requests are checked with, and
        # every request sent would be quarantined.
        raise WrongSecretError(unverified)
    truncated_at, incomplete = scan.truncated_at, scan.incomplete
    if truncated_at is not None and progress is not None:
        print(
            f"the capture ends inside the record at byte {truncated_at} (cut short while being"
            f" written): that record is not sent, the {count} requests before it are",
            file=progress,
        )
    cut = incomplete["cut"]
    if cut and progress is not None:
        print(
            f"{cut} datagram{'s' if cut > 1 else ''} that may hold accounting requests"
            f" {'were' if cut > 1 else 'was'} cut short by the capture's snaplen: not sent",
            file=progress,
        )
    unassembled = sum(incomplete[key] for key in INCOMPLETE_REASONS)
    if unassembled and progress is not None:
        reasons = ", ".join(
            f"{incomplete[key]} {text}"
            for key, text in INCOMPLETE_REASONS.items()
            if incomplete[key]
        )
        print(
            f"{unassembled} fragmented datagram{'s' if unassembled > 1 else ''} that may hold"
            f" accounting requests could not be reassembled ({reasons}): not sent",
            file=progress,
        )
    await set_secrets(stub, metadata, sources, secret, progress)
    size = max(1, batch_size)
    batches = capture_batches(path, scan.length, size, count, replay_run())
    summary = await stream_batches(
        stub, metadata, batches, progress, records=count, total=-(-count // size)
    )
    summary["truncated"] = int(truncated_at is not None)
    # One count for every datagram that may hold a request and was not sent: the same
    # consequence whatever the reason, which stderr gives.
    summary["incomplete_datagrams"] = cut + unassembled
    return summary


SECRETS_IN_FLIGHT = 16


async def set_secrets(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    addresses: list[str],
    secret: str,
    progress: Any = None,
) -> None:
    """Sets `secret` for each source address (only the secret: UpsertNasClient's mask), a
    few calls at a time; a capture of thousands of sources reports its progress."""
    secret_only = FieldMask(paths=["secret"])
    if progress is not None and len(addresses) > SECRETS_IN_FLIGHT:
        print(f"setting the secret of {len(addresses)} source addresses", file=progress)
    pending = iter(addresses)
    done = 0

    async def worker() -> None:
        nonlocal done
        for address in pending:
            await stub.UpsertNasClient(
                usage_pb2.UpsertNasClientRequest(
                    source_address=address, secret=secret, update_mask=secret_only
                ),
                metadata=metadata,
            )
            done += 1
            if progress is not None and done % 1000 == 0:
                print(f"  {done}/{len(addresses)} source addresses", file=progress)

    await asyncio.gather(*(worker() for _ in range(min(SECRETS_IN_FLIGHT, len(addresses)))))


async def replay_detail(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    data: bytes,
    zone: dt.tzinfo = dt.UTC,
    batch_size: int = DEFAULT_BATCH,
    progress: Any = None,
) -> dict[str, int]:
    """Streams a detail file's complete records as decoded entries (no secret needed).

    Records that cannot be read, or that the next header cuts short before their closing
    blank line, are reported on `progress` and counted as rejected; a trailing record
    without its closing blank line is counted as incomplete, not sent.
    """
    parsed = parse_detail(data, zone)
    for rejected in parsed.rejected:
        if progress is not None:
            print(f"record at line {rejected.line} rejected: {rejected.reason}", file=progress)
    if parsed.incomplete and progress is not None:
        print("last record has no closing blank line yet: not sent", file=progress)
    entries = [usage_pb2.AccountingEntry(decoded=r) for r in parsed.records]
    batches = batches_of(entries, batch_size, replay_run())
    summary = await stream_batches(
        stub, metadata, batches, progress, records=len(entries), total=len(batches)
    )
    summary["records"] += len(parsed.rejected)
    summary["rejected"] = len(parsed.rejected)
    summary["incomplete"] = int(parsed.incomplete)
    return summary


async def collect_command(args: argparse.Namespace) -> int:
    """Runs the UDP collector until SIGINT or SIGTERM, then drains (up to 5 s)."""
    try:
        host, port = parse_listen(args.listen)
    except ValueError as error:
        raise SystemExit(f"rating collect: --{error}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with client_channel(args) as channel:
        collector = UdpCollector(
            usage_pb2_grpc.UsageServiceStub(channel),
            auth_metadata(args),
            batch_size=args.batch_size,
            flush_s=args.flush_ms / 1000,
        )
        try:
            bound = await collector.start(host, port)
        except OSError as error:
            raise SystemExit(f"rating collect: --listen {args.listen}: {error}") from None
        print(f"collecting on udp {bound[0]}:{bound[1]} for {args.target}", file=sys.stderr)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.stats_s or None)
            if args.stats_s and not stop.is_set():
                print(json.dumps(collector.stats.as_dict()), file=sys.stderr)
        drained = await collector.close(timeout_s=5.0)
    print(json.dumps(collector.stats.as_dict() | {"drained": drained}))
    return 0 if drained else 1


async def replay_command(args: argparse.Namespace) -> int:
    from rating_core import RatingError

    try:
        head = await asyncio.to_thread(read_head, args.file)
    except OSError as error:
        raise SystemExit(f"rating replay: {args.file}: {error.strerror or error}") from None
    pcap = args.format == "pcap" or (args.format == "auto" and is_pcap(head))
    if args.format == "auto" and not pcap and (why := not_detail(head)):
        raise SystemExit(f"rating replay: {args.file}: {why}; --format names the format")
    if pcap and not args.secret:
        raise SystemExit("rating replay: --secret is required for a pcap")
    try:
        zone = zoneinfo.ZoneInfo(args.detail_tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SystemExit(f"rating replay: --detail-tz: unknown zone {args.detail_tz!r}") from None
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        metadata = auth_metadata(args)
        if pcap:
            try:
                summary = await replay(
                    stub, metadata, args.file, args.secret, args.batch_size, sys.stderr
                )
            except RatingError as error:  # not a capture, a malformed block, a link type
                # not decoded, a request without a capture time: found by the scan, before
                # anything is sent
                raise SystemExit(f"rating replay: {args.file}: {error}") from None
            except OSError as error:
                raise SystemExit(f"rating replay: {args.file}: {error.strerror or error}") from None
            except WrongSecretError as error:
                raise SystemExit(f"rating replay: {args.file}: {error}") from None
            except CaptureChangedError as error:  # the batches before it were stored
                raise SystemExit(f"rating replay: {args.file}: {error}; replay it again") from None
        else:
            try:
                data = await asyncio.to_thread(args.file.read_bytes)
            except OSError as error:
                raise SystemExit(f"rating replay: {args.file}: {error.strerror or error}") from None
            summary = await replay_detail(stub, metadata, data, zone, args.batch_size, sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    # Rejected detail records, a truncated capture record and fragmented datagrams not
    # reassembled were not stored, and a later run will not store them either: the operator
    # has to look at them.
    unstored = ("rejected", "truncated", "incomplete_datagrams")
    return 1 if any(summary.get(name) for name in unstored) else 0


def _iso(ts: Timestamp, present: bool) -> str | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def session_json(s: usage_pb2.Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "user_name": s.user_name or None,
        "nas": s.nas_key,
        "acct_session_id": s.acct_session_id,
        "generation": s.generation,
        "subscription_id": s.subscription_id or None,
        "input_bytes": s.input_bytes,
        "output_bytes": s.output_bytes,
        "session_time_s": s.session_time_s,
        "start_at": _iso(s.start_at, s.HasField("start_at")),
        "stop_at": _iso(s.stop_at, s.HasField("stop_at")),
        "last_update_at": _iso(s.last_update_at, s.HasField("last_update_at")),
        "state": "open" if s.state == usage_pb2.SESSION_STATE_OPEN else "closed",
        "flags": list(s.flags),
        "terminate_cause": s.terminate_cause,
        "calling_station_id": s.calling_station_id or None,
        "framed_ip_address": s.framed_ip_address or None,
        "framed_ipv6_prefix": s.framed_ipv6_prefix or None,
        "delegated_ipv6_prefix": s.delegated_ipv6_prefix or None,
    }


def print_rows(rows: list[dict[str, Any]], *, as_array: bool) -> None:
    """One indented JSON array, or one JSON object per line."""
    if as_array:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(json.dumps(row))


async def all_pages(
    rpc: Any, request: Any, metadata: tuple[tuple[str, str], ...], items: str
) -> list[Any]:
    """Every item of a paginated List RPC: the `items` field of each page, page after page
    (the request's page_token is advanced in place)."""
    out: list[Any] = []
    while True:
        page = await rpc(request, metadata=metadata)
        out.extend(getattr(page, items))
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


async def list_all_sessions(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    request: usage_pb2.ListSessionsRequest,
) -> list[usage_pb2.Session]:
    return await all_pages(stub.ListSessions, request, metadata, "sessions")


async def sessions_command(args: argparse.Namespace) -> int:
    request = usage_pb2.ListSessionsRequest(
        user_name=args.user or "",
        nas_key=args.nas or "",
        subscription_id=args.subscription or "",
        open_only=args.open,
        page_size=1000,
    )
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        rows = [
            session_json(s) for s in await list_all_sessions(stub, auth_metadata(args), request)
        ]
    print_rows(rows, as_array=args.json)
    return 0


async def sweep_command(args: argparse.Namespace) -> int:
    as_of: dt.datetime = args.as_of  # parse_instant, as the argument type
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        reply = await stub.SweepStaleSessions(
            usage_pb2.SweepStaleSessionsRequest(as_of=to_timestamp(as_of)),
            metadata=auth_metadata(args),
        )
    print(json.dumps({"closed": reply.closed}))
    return 0


def quarantined_json(e: usage_pb2.QuarantinedEntry) -> dict[str, Any]:
    return {
        "received_at": _iso(e.received_at, e.HasField("received_at")),
        "batch_id": e.batch_id,
        "entry_index": e.entry_index,
        "reason": e.reason,
        "source_address": e.source_address or None,
        "entry_hex": e.entry.hex(),
    }


async def quarantine_command(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise SystemExit("rating quarantine: --until must be later than --since")
    request = usage_pb2.ListQuarantinedRecordsRequest(
        received_after=to_timestamp(args.since),
        received_before=to_timestamp(args.until),
        page_size=1000,
    )
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        entries = await all_pages(
            stub.ListQuarantinedRecords, request, auth_metadata(args), "entries"
        )
    print_rows([quarantined_json(e) for e in entries], as_array=args.json)
    return 0


async def quarantine_purge_command(args: argparse.Namespace) -> int:
    if args.since is not None or args.until is not None:
        raise SystemExit(
            "rating quarantine purge: --since and --until are for listing; purge deletes"
            " everything received before --before"
        )
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        reply = await stub.PurgeQuarantine(
            usage_pb2.PurgeQuarantineRequest(before=to_timestamp(args.before)),
            metadata=auth_metadata(args),
        )
    print(json.dumps({"deleted": reply.deleted}))
    return 0


def _positive(text: str) -> int:
    value = _whole(text)
    if not 1 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be at least 1 and under 2**32 ({value})")
    return value


def _non_negative(text: str) -> int:
    value = _whole(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0 to 4294967295)")
    return value


def _policy_value(text: str) -> int:
    """A NAS policy's seconds or multiplier: what the server stores (a 32-bit signed int)."""
    value = _whole(text)
    if not 0 <= value <= I32_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0 to {I32_MAX})")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _filter(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (leave it out to list every session)")
    return text


def _secret(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (leave it out to keep the stored one)")
    return text


def nas_set_request(args: argparse.Namespace) -> usage_pb2.UpsertNasClientRequest:
    """The UpsertNasClient of `rating nas set`: the options given, and an update_mask naming
    them (an empty mask would write every field, resetting those not given)."""
    given = {
        name: value
        for name in ("secret", "nas_key", *POLICY_COLUMNS)
        if (value := getattr(args, name)) is not None
    }
    if not given:
        raise SystemExit(
            "rating nas set: nothing to set: give --secret (or RATING_NAS_SECRET), --nas-key"
            " or a policy option (--help lists them)"
        )
    return usage_pb2.UpsertNasClientRequest(
        source_address=args.source_address, update_mask=FieldMask(paths=list(given)), **given
    )


async def nas_set_command(args: argparse.Namespace) -> int:
    request = nas_set_request(args)
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        client = await stub.UpsertNasClient(request, metadata=auth_metadata(args))
    row = {"source_address": client.source_address, "nas": client.nas_key, **_policy(client)}
    print(json.dumps(row))
    return 0


def _policy(message: usage_pb2.NasClient | usage_pb2.Nas) -> dict[str, Any]:
    """The policy fields of a NasClient or Nas message, by their common names."""
    return {name: getattr(message, name) for name in POLICY_COLUMNS}


def nas_json(n: usage_pb2.Nas) -> dict[str, Any]:
    return {
        "nas": n.nas_key,
        "flags": list(n.flags),
        "clock_skew_anomalies": n.clock_skew_anomalies,
        "last_clock_skew_at": _iso(n.last_clock_skew_at, n.HasField("last_clock_skew_at")),
        **_policy(n),
    }


async def nas_list_command(args: argparse.Namespace) -> int:
    request = usage_pb2.ListNasRequest(page_size=1000, flagged_only=args.flagged)
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        nases = await all_pages(stub.ListNas, request, auth_metadata(args), "nas")
    print_rows([nas_json(n) for n in nases], as_array=args.json)
    return 0


async def rebuild_command(args: argparse.Namespace) -> int:
    from server.db.database import Database
    from server.settings import existing_database, load_settings
    from server.usage.rebuild import rebuild

    settings = load_settings(database_url=args.database_url, data_dir=args.data_dir)
    db = Database(existing_database(settings.database_url))
    try:
        report = await rebuild(db, args.tenant)
    finally:
        await db.dispose()
    print(json.dumps(report))
    return 0
