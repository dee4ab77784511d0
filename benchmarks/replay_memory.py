"""Peak memory of reading a capture for `rating replay`: all at once (before) or streamed.

Run under /usr/bin/time -v (its "Maximum resident set size" is the figure):
    python -m benchmarks.replay_memory write /tmp/replay.pcap 300000
    /usr/bin/time -v python -m benchmarks.replay_memory whole /tmp/replay.pcap
    /usr/bin/time -v python -m benchmarks.replay_memory stream /tmp/replay.pcap
`whole` does what replay did before: the file's bytes, read_pcap, an AccountingEntry per
request and the batches; `stream` what it does now: a scan, then one batch at a time.
Nothing is sent. Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import rating_core as core
from server.usage import cli

BATCH = cli.DEFAULT_BATCH


def request(i: int) -> bytes:
    """An Accounting-Request (Interim-Update) of about 130 octets; its authenticator is not
    checked here."""
    attrs = b"".join(
        bytes([kind, len(value) + 2]) + value
        for kind, value in (
            (1, b"user-%06d" % (i % 50_000)),  # User-Name
            (44, b"sess-%08d" % i),  # Acct-Session-Id
            (40, struct.pack(">I", 3)),  # Acct-Status-Type: Interim-Update
            (42, struct.pack(">I", i * 1000 % 2**32)),  # Acct-Input-Octets
            (43, struct.pack(">I", i * 2000 % 2**32)),  # Acct-Output-Octets
            (46, struct.pack(">I", i % 86_400)),  # Acct-Session-Time
            (32, b"bng-%02d" % (i % 64)),  # NAS-Identifier
            (31, b"02:00:00:%02x:%02x:%02x" % (i >> 16 & 255, i >> 8 & 255, i & 255)),
            (55, struct.pack(">I", 1_700_000_000 + i)),  # Event-Timestamp
        )
    )
    return struct.pack(">BBH", 4, i & 255, 20 + len(attrs)) + bytes(16) + attrs


def write(path: Path, count: int) -> None:
    """A raw-IP classic pcap of `count` requests from 3,000 sources, one per millisecond."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i in range(count):
            payload = request(i)
            udp = struct.pack(">HHHH", 40000, 1813, 8 + len(payload), 0) + payload
            source = bytes([10, 0, (i % 3000) >> 8, (i % 3000) & 255])
            ip = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0)
            ip += source + bytes([192, 0, 2, 254]) + udp
            us = 1_700_000_000_000_000 + i * 1000
            out.write(struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(ip), len(ip)))
            out.write(ip)


def whole(path: Path) -> int:
    packets, sources, times, _, _ = core.read_pcap(path.read_bytes())
    entries = cli.raw_entries(packets, sources, times.tolist())
    return sum(len(b.entries) for b in cli.batches_of(entries, BATCH))


def stream(path: Path) -> int:
    scan = core.CaptureReader(path)
    count, _, _ = scan.scan()
    reader, sent = core.CaptureReader(path, scan.length), 0
    while chunk := reader.next_chunk(BATCH):
        packets, sources, times = chunk
        sent += len(cli.raw_entries(packets, sources, times.tolist()))
    assert sent == count
    return sent


if __name__ == "__main__":
    mode, file = sys.argv[1], Path(sys.argv[2])
    if mode == "write":
        write(file, int(sys.argv[3]))
    else:
        print(f"{mode}: {(whole if mode == 'whole' else stream)(file)} requests")
