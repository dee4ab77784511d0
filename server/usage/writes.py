"""What one engine result writes, as plain columns that split by NAS group.

A batch's rows (ledger, session instances, hourly deltas, anomalies) each belong to one NAS
key. On PostgreSQL a large batch is written by several transactions at once, one per group
of NAS keys (each holds the row locks of its NASes only), so that the database uses more
than one core; `BatchWrites.parts` cuts the columns along those groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from server.usage import repository as repo

# Outcome codes of the engine contract (docs/accounting-engine.md).
ACCEPTED, DUPLICATE, LATE, QUARANTINED = 1, 2, 3, 4

# (nas_key, acct_session_id, generation, entry_index, flag, detail)
AnomalyRow = tuple[str, str, int | None, int, int, str]
Int64s = npt.NDArray[np.int64]


def _groups_of(keys: Sequence[str], groups: Sequence[Sequence[str]]) -> Int64s:
    """The group of each key; keys of no group (and "") go to group 0."""
    index = {key: g for g, group in enumerate(groups) for key in group}
    return np.fromiter((index.get(k, 0) for k in keys), dtype=np.int64, count=len(keys))


@dataclass
class Projection:
    """Session rows (SESSION_COLUMNS order), hourly deltas per session row and anomalies
    of one engine result (batch, sweep or replay)."""

    sessions: list[npt.NDArray[Any]]
    bucket_row: Int64s  # row in `sessions`
    bucket_hour_us: Int64s
    bucket_deltas: tuple[Int64s, Int64s, Int64s]  # upload, download, seconds (bit for bit)
    anomalies: list[AnomalyRow]
    anomaly_nas: list[str]  # NAS key of each anomaly ("" when it names none)

    @classmethod
    def of(cls, result: Any, mapping: Int64s) -> Projection:
        """`mapping`: the original batch position of each entry of the result."""
        sessions = repo.session_columns(result.sessions)
        deltas = tuple(
            np.ascontiguousarray(values, dtype=np.uint64).view(np.int64)
            for values in (
                result.bucket_input_bytes,
                result.bucket_output_bytes,
                result.bucket_session_s,
            )
        )
        anomalies: list[AnomalyRow] = []
        anomaly_nas: list[str] = []
        raised = result.anomalies
        if raised:
            nas_keys, session_ids, generations = sessions[0], sessions[1], sessions[2]
            entry_nas = np.asarray(result.nas_index, dtype=np.int64)
            batch_nas = result.nas_keys
            for entry, row, flag, detail in raised:
                original = int(mapping[entry]) if entry >= 0 else -1
                if row >= 0:
                    nas = str(nas_keys[row])
                    sid, generation = str(session_ids[row]), int(generations[row])
                    anomalies.append((nas, sid, generation, original, int(flag), detail))
                else:
                    k = int(entry_nas[entry]) if 0 <= entry < entry_nas.size else -1
                    nas = batch_nas[k] if k >= 0 else ""
                    # A NAS-level anomaly (Accounting-On/Off clock skew): no session.
                    anomalies.append((nas, "", None, original, int(flag), detail))
                anomaly_nas.append(nas)
        return cls(
            sessions=sessions,
            bucket_row=np.asarray(result.bucket_session_index, dtype=np.int64),
            bucket_hour_us=np.asarray(result.bucket_hour_us, dtype=np.int64),
            bucket_deltas=(deltas[0], deltas[1], deltas[2]),
            anomalies=anomalies,
            anomaly_nas=anomaly_nas,
        )

    def __len__(self) -> int:
        return len(self.sessions[0])

    def parts(self, groups: Sequence[Sequence[str]]) -> list[Projection]:
        if len(groups) == 1:
            return [self]
        session_group = _groups_of(self.sessions[0].tolist(), groups)
        bucket_group = session_group[self.bucket_row]
        anomaly_group = _groups_of(self.anomaly_nas, groups)
        out = []
        for g in range(len(groups)):
            rows = np.flatnonzero(session_group == g)
            remap = np.full(len(self), -1, dtype=np.int64)
            remap[rows] = np.arange(rows.size)
            buckets = np.flatnonzero(bucket_group == g)
            mine = np.flatnonzero(anomaly_group == g).tolist()
            out.append(
                Projection(
                    sessions=[column[rows] for column in self.sessions],
                    bucket_row=remap[self.bucket_row[buckets]],
                    bucket_hour_us=self.bucket_hour_us[buckets],
                    bucket_deltas=(
                        self.bucket_deltas[0][buckets],
                        self.bucket_deltas[1][buckets],
                        self.bucket_deltas[2][buckets],
                    ),
                    anomalies=[self.anomalies[i] for i in mine],
                    anomaly_nas=[self.anomaly_nas[i] for i in mine],
                )
            )
        return out


@dataclass
class BatchPart:
    """The writes of one group of NAS keys (the first group also takes the quarantine)."""

    ledger: repo.LedgerRows
    quarantine: list[tuple[int, str, bytes]]
    projection: Projection
    nas_keys: list[str]
    nas_seq: list[int]


@dataclass
class BatchWrites:
    """Everything an applied batch writes: ledger rows of its accepted and late records,
    its quarantine, its projection and its NAS sequence numbers."""

    outcome: npt.NDArray[np.uint8]
    # Entries (this call's indices) that flagged a session although late (an Interim after
    # a Stop, a skewed clock): a repeat must change nothing, so one the ledger holds re-runs.
    late_flagging: Int64s
    # Every entry's content key (this call's indices; quarantined ones are not keys).
    content_key: npt.NDArray[Any]
    # Entries that began an instance (or went to one begun without a Start), each with a
    # key that makes it a copy of another instance's record if the ledger holds it
    # (ApplyResult.copy_entry / copy_key).
    copy_entry: Int64s
    copy_key: list[bytes]
    ledger_nas: npt.NDArray[Any]
    ledger: dict[str, npt.NDArray[Any]]
    quarantine: list[tuple[int, str, bytes]]
    projection: Projection
    nas_keys: list[str]
    nas_seq: list[int]

    @classmethod
    def of(cls, result: Any, mapping: Int64s) -> BatchWrites:
        outcome = np.asarray(result.outcome, dtype=np.uint8)
        rows = np.flatnonzero((outcome == ACCEPTED) | (outcome == LATE))
        nas_keys = list(result.nas_keys)
        nas_index = np.asarray(result.nas_index, dtype=np.int64)[rows]
        # Every attribute read of an engine result copies its column: read each once.
        entry_bytes = result.entry_bytes
        ledger_nas = repo.object_array(nas_keys)[nas_index]
        content_key = np.asarray(result.content_key)
        ledger = {
            "content_key": content_key[rows],
            "nas_key": ledger_nas,
            "nas_seq": np.asarray(result.nas_seq, dtype=np.int64)[nas_index],
            "entry_index": mapping[rows],
            "entry_bytes": repo.object_array(entry_bytes)[rows],
            "status": outcome[rows].astype(np.int64),
            "status_type": np.asarray(result.status_type, dtype=np.int64)[rows],
            "event_us": np.asarray(result.event_us, dtype=np.int64)[rows],
            "arrival_us": np.asarray(result.arrival_us, dtype=np.int64)[rows],
        }
        quarantine = [(int(mapping[i]), reason, entry_bytes[i]) for i, reason in result.quarantine]
        projection = Projection.of(result, mapping)
        flagging = np.isin(mapping, [a[3] for a in projection.anomalies])
        return cls(
            outcome=outcome,
            late_flagging=np.flatnonzero(flagging & (outcome == LATE)),
            content_key=content_key,
            copy_entry=np.asarray(result.copy_entry, dtype=np.int64),
            copy_key=[k.tobytes() for k in result.copy_key],
            ledger_nas=ledger_nas,
            ledger=ledger,
            quarantine=quarantine,
            projection=projection,
            nas_keys=nas_keys,
            nas_seq=np.asarray(result.nas_seq, dtype=np.int64).tolist(),
        )

    def parts(self, groups: Sequence[Sequence[str]]) -> list[BatchPart]:
        """One part per group of NAS keys, in the order of `groups`."""
        ledger_group = _groups_of(self.ledger_nas.tolist(), groups)
        nas_group = _groups_of(self.nas_keys, groups)
        projections = self.projection.parts(groups)
        out = []
        for g in range(len(groups)):
            rows = np.flatnonzero(ledger_group == g)
            columns = {name: values[rows].tolist() for name, values in self.ledger.items()}
            mine = np.flatnonzero(nas_group == g).tolist()
            out.append(
                BatchPart(
                    ledger=repo.LedgerRows(**columns),
                    quarantine=self.quarantine if g == 0 else [],
                    projection=projections[g],
                    nas_keys=[self.nas_keys[i] for i in mine],
                    nas_seq=[self.nas_seq[i] for i in mine],
                )
            )
        return out
