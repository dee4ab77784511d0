"""Type contract of the compiled module; CI checks it with mypy.stubtest.

See docs/accounting-engine.md for the protocol between the engine and the usage service.
"""

from os import PathLike
from typing import Self, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ONOFF_MEMORY",
    "OUTCOME_ACCEPTED",
    "OUTCOME_DUPLICATE",
    "OUTCOME_LATE",
    "OUTCOME_QUARANTINED",
    "ApplyResult",
    "CaptureReader",
    "Engine",
    "NasPolicy",
    "PreparedBatch",
    "RatingError",
    "SessionColumns",
    "accounting_response",
    "decode_radius",
    "empty_sessions",
    "flag_names",
    "format_units",
    "make_sessions",
    "parse_units",
    "read_pcap",
]

class RatingError(ValueError): ...

def parse_units(text: str, scale: int) -> int: ...
def format_units(units: int, scale: int) -> str: ...

# Outcome codes, one per entry of a batch.
OUTCOME_ACCEPTED: int  # 1
OUTCOME_DUPLICATE: int  # 2
OUTCOME_LATE: int  # 3
OUTCOME_QUARANTINED: int  # 4
# Accounting-On/Offs an engine remembers per NAS (Engine.recall_onoffs).
ONOFF_MEMORY: int  # 8

def flag_names(flags: int) -> list[str]:
    """Names of the session flag bits set in `flags` (lost_start, counter_reset, ...)."""

def decode_radius(packet: bytes, secret: bytes | None) -> dict[str, object]:
    """Decodes one Accounting-Request (for tools and tests; the hot path never calls it).

    Raises RatingError naming the defect. With a secret, the authenticator is verified.
    """

def accounting_response(request: bytes, secret: bytes) -> bytes:
    """The Accounting-Response (code 5) that acknowledges `request`."""

def read_pcap(
    data: bytes,
) -> tuple[list[bytes], list[str], npt.NDArray[np.int64], int | None, dict[str, int]]:
    """RADIUS Accounting-Requests (code 4, UDP to port 1813 or 1646) of a classic pcap or
    pcapng file.

    Returns (packets, source addresses, capture times in µs, truncated_at, incomplete), in
    capture order, from every complete record; IPv4 and IPv6 fragments are reassembled, and
    a reassembled request is placed (and timed) by the fragment that completed it.
    truncated_at is the byte offset of a last record or block the file ends inside (a capture
    killed mid-write), else None. incomplete counts the datagrams that may hold requests and
    are not returned: fragmented ones not reassembled, {"missing": a fragment never came (60 s
    or the end of the capture), "conflicting": fragments disagree, "evicted": over the
    reassembly memory limit}, and "cut": the datagram or one of its fragments was cut short
    by the capture's snaplen (captured length under the original length). Raises RatingError
    for a file that is neither format, a link type it does not decode, a malformed pcapng
    block, a classic record whose fraction of a second is not under a second, or a request
    in a Simple Packet Block (no time).
    """

@final
class CaptureReader:
    """A classic pcap or pcapng file read a chunk of requests at a time, in the order and
    with the outcome of read_pcap, holding a 1 MiB window of the file and the fragments
    waiting for the rest of their datagram (at most 64 MiB), whatever the file's size.

    Only the length the file has when opened (or `length`, if less) is read. Opening
    raises OSError when the file cannot be opened and RatingError for a bad header (as
    read_pcap); the reads raise RatingError as read_pcap does, or when the file can no
    longer be read, and the reader ends there.
    """

    def __new__(cls, path: str | PathLike[str], length: int | None = None) -> Self: ...
    @property
    def length(self) -> int:
        """The bytes of the file that are read."""

    def next_chunk(
        self, max_requests: int
    ) -> tuple[list[bytes], list[str], npt.NDArray[np.int64]] | None:
        """The next requests (packets, source addresses, capture times in µs): at least one
        and at most max_requests; None once the capture has been read to its end."""

    def scan(self, secret: bytes | None = None) -> tuple[int, list[str], list[tuple[str, int]]]:
        """Reads the rest of the capture keeping only how many requests it holds and their
        distinct source addresses, sorted. With `secret`, the third item lists each source
        whose requests `secret` cannot be the secret of: some are framed well enough to
        check, and it verifies none of them (the source and how many were checked); without,
        it is empty."""

    @property
    def done(self) -> bool:
        """Whether the capture has been read to its end (or to an error)."""

    @property
    def truncated_at(self) -> int | None:
        """Once done: the byte offset of a last record cut short, else None."""

    @property
    def incomplete(self) -> dict[str, int]:
        """Once done: the datagrams not read whole, by reason (as read_pcap's)."""

@final
class NasPolicy:
    def __new__(
        cls,
        *,
        swap_direction: bool = False,
        infer_wrap: bool = False,
        interim_interval_s: int = 600,
        stale_multiplier: int = 3,
        grace_s: int = 300,
        clock_skew_tolerance_s: int = 300,
    ) -> Self: ...
    @property
    def swap_direction(self) -> bool: ...
    @property
    def infer_wrap(self) -> bool: ...
    @property
    def interim_interval_s(self) -> int: ...
    @property
    def stale_multiplier(self) -> int: ...
    @property
    def grace_s(self) -> int: ...
    @property
    def clock_skew_tolerance_s(self) -> int: ...

@final
class PreparedBatch:
    """A decoded, validated batch; touches no session state."""

    @property
    def batch_id(self) -> str: ...
    @property
    def nas_keys(self) -> list[str]:
        """Distinct NAS keys the batch touches, sorted."""

    @property
    def content_key(self) -> npt.NDArray[np.void]:
        """Per entry, dtype V16 (all-zero when quarantined). For a Start, or an Interim or
        Stop with a session time, sent without Event-Timestamp, the key is completed with
        its instance's start in apply (ApplyResult.content_key): the ledger never holds
        this one, so only the insert after apply finds such a record."""

    @property
    def responses(self) -> list[tuple[int, bytes]]:
        """(entry index, Accounting-Response) of each raw entry that authenticated and was
        not quarantined, ascending: relay one only once its record is durable."""

    @property
    def quarantine(self) -> list[tuple[int, str]]:
        """(entry index, reason) of each quarantined entry, ascending."""

    def __len__(self) -> int: ...

@final
class SessionColumns:
    """Session instances, one row per index, all arrays of equal length."""

    nas_key: list[str]
    acct_session_id: list[str]
    generation: npt.NDArray[np.uint32]
    user_name: list[str]
    calling_station_id: list[str]
    framed_ip_address: list[str]
    framed_ipv6_prefix: list[str]  # canonical text, "2001:db8::/64"; "" when none was sent
    delegated_ipv6_prefix: list[str]
    start_us: npt.NDArray[np.int64]
    stop_us: npt.NDArray[np.int64]  # -1 while open
    last_update_us: npt.NDArray[np.int64]  # event time of the last applied update
    session_time_s: npt.NDArray[np.uint32]
    input_bytes: npt.NDArray[np.uint64]  # usage so far (resets included), upload
    output_bytes: npt.NDArray[np.uint64]  # download (after the NAS's swap policy)
    # High-water marks of the NAS's Acct-Input/Output counters as sent (before any swap).
    hwm_input: npt.NDArray[np.uint64]
    hwm_output: npt.NDArray[np.uint64]
    last_key: npt.NDArray[np.void]  # 16-byte content key of the last applied record
    flags: npt.NDArray[np.uint32]
    terminate_cause: npt.NDArray[np.uint32]  # 0 when none
    open: npt.NDArray[np.bool_]
    def __len__(self) -> int: ...

@final
class ApplyResult:
    # Per entry of the batch, in batch order.
    outcome: npt.NDArray[np.uint8]
    content_key: npt.NDArray[np.void]  # dtype V16; all-zero for quarantined entries
    nas_index: npt.NDArray[np.int32]  # index into nas_keys; -1 when quarantined
    session_index: npt.NDArray[np.int32]  # row in `sessions`; -1 when none (On/Off, bad)
    event_us: npt.NDArray[np.int64]  # effective event time (clock-skew policy applied)
    arrival_us: npt.NDArray[np.int64]
    status_type: npt.NDArray[np.uint8]
    entry_bytes: list[bytes]  # each entry's exact AccountingEntry wire bytes (ledger)
    quarantine: list[tuple[int, str]]  # (entry index, reason), ascending
    nas_keys: list[str]
    nas_seq: npt.NDArray[np.int64]  # per nas_keys: sequence after this batch
    # Every session instance this batch created or changed (final state after the batch).
    sessions: SessionColumns
    # Usage deltas per (session row, hour), summed within the batch.
    bucket_session_index: npt.NDArray[np.int32]
    bucket_hour_us: npt.NDArray[np.int64]  # start of the UTC hour
    bucket_input_bytes: npt.NDArray[np.uint64]
    bucket_output_bytes: npt.NDArray[np.uint64]
    bucket_session_s: npt.NDArray[np.uint64]
    # Anomalies: (entry index or -1, session row or -1, flag bit, detail).
    anomalies: list[tuple[int, int, int, str]]
    # Possible copies: an Interim or Stop timed by its arrival that began an instance, or
    # went to one begun without a Start, is a copy of a record another instance of its id
    # took if the ledger holds copy_key[j] (same content, pinned by that instance's start);
    # the entry is then a duplicate, and the batch must be applied again without it.
    copy_entry: npt.NDArray[np.int64]  # entry index, ascending (repeated per candidate)
    copy_key: npt.NDArray[np.void]  # dtype V16

@final
class Engine:
    """The accounting state of one tenant: NAS policies, secrets and live sessions."""

    def __new__(
        cls, default_policy: NasPolicy | None = None, *, ledger_replay: bool = False
    ) -> Self:
        """`ledger_replay`: batches come from the ledger (rating rebuild); raw packets were
        authenticated when accepted and are decoded without a secret (no response)."""

    def set_secret(self, source_address: str, secret: bytes) -> None: ...
    def set_policy(self, nas_key: str, policy: NasPolicy) -> None: ...
    def prepare(self, batch: bytes, default_arrival_us: int) -> PreparedBatch:
        """Decodes a serialized StreamAccountingRequest; GIL released."""

    def nas_seq(self, nas_key: str) -> int | None:
        """Sequence this engine has applied for the NAS, None when it holds no state."""

    def load_sessions(
        self,
        nas_key: str,
        seq: int,
        sessions: SessionColumns,
        *,
        complete: bool = False,
        omitted_start_max_us: int | None = None,
    ) -> None:
        """Replaces the engine's state for one NAS with the database's.

        `complete`: the rows are every instance stored for the NAS, so a session id the
        engine does not hold has none stored (unknown_sessions skips the NAS). Otherwise
        `omitted_start_max_us` is the latest start of a stored instance left out (None:
        unknown), which bounds what unmatched_sessions asks for.
        """

    def recall_onoffs(self, nas_key: str, onoffs: list[tuple[bytes, int, int, bool]]) -> None:
        """After load_sessions: the NAS's latest accepted Accounting-On/Offs from the ledger,
        oldest first, as (content key, status type, event time µs, timed by its arrival);
        the last 8 are kept. A session found later that started before one of them is
        closed by it, and a copy of one timed by its arrival within 2 s is a repeat."""

    def unknown_sessions(self, prepared: PreparedBatch) -> list[tuple[str, str]]:
        """(nas_key, acct_session_id) of the batch's session records the engine holds no
        instance of, on NASes whose older instances it may have forgotten; each once.

        Give the engine the newest stored instance of each (add_sessions) before apply:
        a reused id then continues its generations, and a late record finds its instance.
        """

    def unmatched_sessions(self, prepared: PreparedBatch) -> list[tuple[str, str, int, int]]:
        """(nas_key, acct_session_id, lo_us, hi_us) for the batch's Interims and Stops, on
        NASes whose older instances the engine may have forgotten, that no instance it holds
        would take: their instance may be a forgotten older generation; each id once.

        Call it after the newest instances (unknown_sessions) were added, and add the stored
        instances of each id that start within [lo_us, hi_us] before apply.
        """

    def add_sessions(self, sessions: SessionColumns) -> None:
        """Adds stored instances the engine does not hold (rows of generations it holds are
        skipped); an older generation goes below the newer ones. NAS sequences are
        unchanged."""

    def forget_nas(self, nas_keys: list[str]) -> None: ...
    def apply(
        self, prepared: PreparedBatch, known: npt.NDArray[np.bool_] | None = None
    ) -> ApplyResult:
        """Dedup, sessions, deltas, buckets, flags; GIL released.

        `known`: one flag per entry whose content key the ledger already holds; those are
        duplicates and touch no state.
        """

    def sweep(self, as_of_us: int) -> ApplyResult:
        """Closes stale sessions at their last update time (entry arrays are empty)."""

    def session_count(self) -> int: ...
    def heap_bytes(self) -> int: ...

def empty_sessions() -> SessionColumns: ...
def make_sessions(
    nas_key: list[str],
    acct_session_id: list[str],
    generation: npt.NDArray[np.uint32],
    user_name: list[str],
    calling_station_id: list[str],
    framed_ip_address: list[str],
    start_us: npt.NDArray[np.int64],
    stop_us: npt.NDArray[np.int64],
    last_update_us: npt.NDArray[np.int64],
    session_time_s: npt.NDArray[np.uint32],
    input_bytes: npt.NDArray[np.uint64],
    output_bytes: npt.NDArray[np.uint64],
    hwm_input: npt.NDArray[np.uint64],
    hwm_output: npt.NDArray[np.uint64],
    last_key: npt.NDArray[np.void],
    flags: npt.NDArray[np.uint32],
    terminate_cause: npt.NDArray[np.uint32],
    open: npt.NDArray[np.bool_],
    framed_ipv6_prefix: list[str] | None = None,
    delegated_ipv6_prefix: list[str] | None = None,
) -> SessionColumns:
    """Builds SessionColumns from database rows (for Engine.load_sessions). The engine
    loads no identity text: the IPv6 prefixes may be left out (empty on every row)."""
