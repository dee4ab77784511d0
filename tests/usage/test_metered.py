"""RecordUsage over a real channel: every bad input named, and the units of each usage type."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2 as pb
from tests.usage.support import Usage
from tests.usage.test_api import expect_status, metered

BAD_TIMESTAMPS = [
    Timestamp(seconds=2**40),
    Timestamp(seconds=-(2**40)),
    Timestamp(seconds=0, nanos=2_000_000_000),
    Timestamp(seconds=0, nanos=-1),
]


def request(**changes: Any) -> pb.RecordUsageRequest:
    """test_api's metered() request with a fresh key; Timestamps are copied in."""
    times = {k: changes.pop(k) for k in list(changes) if isinstance(changes[k], Timestamp)}
    out = metered(uuid.uuid4().hex, **changes)
    for name, value in times.items():
        getattr(out, name).CopyFrom(value)
    return out


def custom(**changes: Any) -> dict[str, Any]:
    return {"usage_type": pb.USAGE_TYPE_CUSTOM, "custom_type": "api-calls", **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idempotency_key": "k" * 201}, "idempotency_key"),
        ({"idempotency_key": "k\x00"}, "idempotency_key"),
        (custom(unit="u" * 65), "unit"),
        (custom(custom_type="c" * 121), "custom_type"),
        ({"custom_type": "api-calls"}, "custom_type"),
        ({"radius_user_name": "u" * 254}, "radius_user_name"),
        ({"radius_user_name": "é" * 127}, "radius_user_name"),  # 127 characters, 254 octets
        ({"radius_user_name": "u" * 256}, "radius_user_name"),
        ({"quantity": "1" + "0" * 25}, "quantity"),
        ({"quantity": "1e25"}, "quantity"),
        ({"quantity": "1000000000000000000000"}, "quantity"),  # 10^21: 22 integer digits
        ({"quantity": "0.0000000001"}, "quantity"),
        ({"quantity": "12.5000000001"}, "quantity"),
        ({"quantity": "12345678901234567890.1234567891"}, "quantity"),  # past 28 digits
        ({"quantity": "NaN"}, "quantity"),
        ({"quantity": "Infinity"}, "quantity"),
        ({"occurred_at": BAD_TIMESTAMPS[0]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[1]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[2]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[3]}, "occurred_at"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "messages"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "gb"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "Gb"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_VOICE, "unit": "bytes"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_SMS, "unit": "minutes"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "bytes", "quantity": "0.5"}, "quantity"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "kB", "quantity": "0.0005"}, "quantity"),
        ({"usage_type": pb.USAGE_TYPE_SMS, "unit": "messages", "quantity": "1.5"}, "quantity"),
    ],
)
async def test_record_usage_is_invalid_argument_naming_the_field_when_it_does_not_fit(
    usage: Usage, changes: dict[str, Any], field: str
) -> None:
    await expect_status(
        usage.stub.RecordUsage(request(**changes), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}:",
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"idempotency_key": "k" * 200},
        {"radius_user_name": "u" * 253},
        {"radius_user_name": "é" * 126},  # 252 octets
        custom(unit="u" * 64, custom_type="c" * 120),
        custom(unit="requests", quantity="0.000000001"),
        {"quantity": "999999999999999999999.999999999"},
        {"quantity": "12.500000000000"},  # trailing zeros are not precision
        {"usage_type": pb.USAGE_TYPE_VOICE, "unit": "seconds", "quantity": "0.25"},
        {"usage_type": pb.USAGE_TYPE_DATA, "unit": "GB", "quantity": "1.5"},
        {"usage_type": pb.USAGE_TYPE_DATA, "unit": "KiB", "quantity": "0.5"},
        {"usage_type": pb.USAGE_TYPE_DATA, "unit": "TiB", "quantity": "999999999999999999999"},
        {"usage_type": pb.USAGE_TYPE_SMS, "unit": "sms", "quantity": "3"},
    ],
)
async def test_record_usage_is_accepted_when_input_is_at_the_limits(
    usage: Usage, changes: dict[str, Any]
) -> None:
    reply = await usage.stub.RecordUsage(request(**changes), metadata=usage.metadata)
    assert reply.usage_id
    assert not reply.replayed


@pytest.mark.parametrize("bad", BAD_TIMESTAMPS)
async def test_sweep_is_invalid_argument_naming_as_of_when_it_is_out_of_range(
    usage: Usage, bad: Timestamp
) -> None:
    await expect_status(
        usage.stub.SweepStaleSessions(
            pb.SweepStaleSessionsRequest(as_of=bad), metadata=usage.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "as_of:",
    )
