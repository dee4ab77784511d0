"""Page tokens come back from the client: a tampered one is INVALID_ARGUMENT naming
page_token on every listing and both databases, never INTERNAL, and never a query."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest

from isp_rating.v1 import accounts_pb2, accounts_pb2_grpc
from isp_rating.v1 import usage_pb2 as pb
from server.usage.quarantine import window_scope
from server.usage.queries import SessionFilter, nas_scope, session_scope
from server.validation import encode_page_token
from tests.conftest import TenantCtx
from tests.usage.support import Usage

AT = "2024-03-01T10:00:00+00:00"
SESSION = {"s": AT, "n": "nas-1", "a": "sess-1", "g": 1}
IDENTITY = {"u": "alice", "c": "", "f": "", "p": "", "d": ""}
QUARANTINED = {"r": AT, "b": "batch", "i": 0, "d": "00" * 32}
# Tokens of listings without filters (the requests below send none), so that what each
# case tampers with is what refuses it.
SESSION_SCOPE = session_scope(SessionFilter())
NAS_SCOPE = nas_scope(False)
QUARANTINE_SCOPE = window_scope(None, None)


def token(cursor: Any, scope: str = "") -> str:
    return encode_page_token(cursor, scope)


def raw_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def but(base: dict[str, Any], scope: str = "", **changes: Any) -> str:
    return token({**base, **changes}, scope)


# The kinds of tampering: a wrong type, a number past its column, a time without offset or
# out of range once in UTC, NUL or a lone surrogate (no text column holds them), a huge text.
SESSIONS = {
    "naive time": but(SESSION, SESSION_SCOPE, s="2024-03-01T10:00:00"),
    "year 1 at +14:00": but(SESSION, SESSION_SCOPE, s="0001-01-01T00:00:00+14:00"),
    "year 10000 in UTC": but(SESSION, SESSION_SCOPE, s="9999-12-31T23:00:00-05:00"),
    "time as a number": but(SESSION, SESSION_SCOPE, s=1_700_000_000),
    "generation 2**70": but(SESSION, SESSION_SCOPE, g=2**70),
    "generation 2**63": but(SESSION, SESSION_SCOPE, g=2**63),
    "generation -1": but(SESSION, SESSION_SCOPE, g=-1),
    "generation as text": but(SESSION, SESSION_SCOPE, g="1"),
    "generation true": but(SESSION, SESSION_SCOPE, g=True),
    "generation 1.5": but(SESSION, SESSION_SCOPE, g=1.5),
    "generation 1e400": raw_token(
        json.dumps({**SESSION, "q": SESSION_SCOPE}).replace('"g": 1', '"g": 1e400')
    ),
    "generation NaN": raw_token(
        json.dumps({**SESSION, "q": SESSION_SCOPE}).replace('"g": 1', '"g": NaN')
    ),
    "NUL in nas": but(SESSION, SESSION_SCOPE, n="a\x00"),
    "nas as a number": but(SESSION, SESSION_SCOPE, n=5),
    "nas as a list": but(SESSION, SESSION_SCOPE, n=["nas-1"]),
    "nas null": but(SESSION, SESSION_SCOPE, n=None),
    "lone surrogate": but(SESSION, SESSION_SCOPE, a="\ud800"),
    "huge text": but(SESSION, SESSION_SCOPE, a="x" * 5000),
    "no generation": token({"s": AT, "n": "n", "a": "a"}, SESSION_SCOPE),
    "deep nesting": raw_token("[" * 5000 + "]" * 5000),
    "huge token": raw_token('{"s": "' + "x" * 20000 + '"}'),
    "not an object": token([SESSION]),
}
UNATTRIBUTED = {
    "user as a number": but(IDENTITY, u=7),
    "NUL in calling station": but(IDENTITY, c="a\x00"),
    "prefix as a list": but(IDENTITY, p=["x"]),
    "lone surrogate": but(IDENTITY, d="\udfff"),
    "usage type 2**70": token({"m": ["alice", 2**70, "", "minutes"]}),
    "usage type as text": token({"m": ["alice", "2", "", "minutes"]}),
    "NUL in user": token({"m": ["alice\x00", 2, "", "minutes"]}),
    "unit as a number": token({"m": ["alice", 2, "", 5]}),
    "three parts": token({"m": ["alice", 2, ""]}),
    "metered as text": token({"m": "alice"}),
    "metered as an object": token({"m": {"u": "alice"}}),
}
QUARANTINE = {
    "year 1 at +14:00": but(QUARANTINED, QUARANTINE_SCOPE, r="0001-01-01T00:00:00+14:00"),
    "time as a number": but(QUARANTINED, QUARANTINE_SCOPE, r=0),
    "NUL in batch": but(QUARANTINED, QUARANTINE_SCOPE, b="b\x00"),
    "batch as a number": but(QUARANTINED, QUARANTINE_SCOPE, b=5),
    "index 2**31": but(QUARANTINED, QUARANTINE_SCOPE, i=2**31),
    "index 2**70": but(QUARANTINED, QUARANTINE_SCOPE, i=2**70),
    "index as text": but(QUARANTINED, QUARANTINE_SCOPE, i="0"),
    "digest as a number": but(QUARANTINED, QUARANTINE_SCOPE, d=5),
    "digest not hex": but(QUARANTINED, QUARANTINE_SCOPE, d="zz"),
}
NAS = {
    "NUL": token({"k": "nas\x00"}, NAS_SCOPE),
    "list": token({"k": ["nas-1"]}, NAS_SCOPE),
    "number": token({"k": 5}, NAS_SCOPE),
    "missing": token({}, NAS_SCOPE),
}
CUSTOMERS = {
    "id as a number": token({"after": int("1" * 32)}),  # str() of it was a valid UUID
    "NUL": token({"after": "00000000-0000-0000-0000-00000000000\x00"}),
    "list": token({"after": ["00000000-0000-0000-0000-000000000000"]}),
}


async def expect_page_token_refused(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = caught.value.details() or ""
    assert details.startswith("page_token: ")
    assert "other filters" not in details  # refused for what it tampers with


@pytest.mark.parametrize("page_token", SESSIONS.values(), ids=SESSIONS.keys())
async def test_list_sessions_is_invalid_argument_when_page_token_is_tampered(
    usage: Usage, page_token: str
) -> None:
    await expect_page_token_refused(
        usage.stub.ListSessions(
            pb.ListSessionsRequest(page_token=page_token), metadata=usage.metadata
        )
    )


@pytest.mark.parametrize("page_token", UNATTRIBUTED.values(), ids=UNATTRIBUTED.keys())
async def test_list_unattributed_is_invalid_argument_when_page_token_is_tampered(
    usage: Usage, page_token: str
) -> None:
    await expect_page_token_refused(
        usage.stub.ListUnattributedUsage(
            pb.ListUnattributedUsageRequest(page_token=page_token), metadata=usage.metadata
        )
    )


@pytest.mark.parametrize("page_token", QUARANTINE.values(), ids=QUARANTINE.keys())
async def test_list_quarantined_is_invalid_argument_when_page_token_is_tampered(
    usage: Usage, page_token: str
) -> None:
    await expect_page_token_refused(
        usage.stub.ListQuarantinedRecords(
            pb.ListQuarantinedRecordsRequest(page_token=page_token), metadata=usage.metadata
        )
    )


@pytest.mark.parametrize("page_token", NAS.values(), ids=NAS.keys())
async def test_list_nas_is_invalid_argument_when_page_token_is_tampered(
    usage: Usage, page_token: str
) -> None:
    await expect_page_token_refused(
        usage.stub.ListNas(pb.ListNasRequest(page_token=page_token), metadata=usage.metadata)
    )


@pytest.mark.parametrize("page_token", CUSTOMERS.values(), ids=CUSTOMERS.keys())
async def test_list_customers_is_invalid_argument_when_page_token_is_tampered(
    channel: grpc.aio.Channel, tenant: TenantCtx, page_token: str
) -> None:
    accounts = accounts_pb2_grpc.AccountServiceStub(channel)
    await expect_page_token_refused(
        accounts.ListCustomers(
            accounts_pb2.ListCustomersRequest(page_token=page_token), metadata=tenant.metadata
        )
    )


async def test_tokens_the_server_wrote_still_resume_when_their_texts_are_not_ascii(
    usage: Usage,
) -> None:
    # The longest texts a token carries: RADIUS text that JSON escapes character by character.
    for cursor in (
        {"s": "0001-01-01T00:00:00+00:00", "n": "\ufffd" * 253, "a": "\U0001f600" * 63, "g": 0},
        {"s": AT, "n": "nas-1", "a": "sess-1", "g": 2**63 - 1},
    ):
        page = await usage.stub.ListSessions(
            pb.ListSessionsRequest(page_token=token(cursor, SESSION_SCOPE)),
            metadata=usage.metadata,
        )
        assert list(page.sessions) == []
    page = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(
            page_token=token({"m": ["\ufffd" * 253, 2, "c" * 120, "u"]})
        ),
        metadata=usage.metadata,
    )
    assert list(page.metered) == []
