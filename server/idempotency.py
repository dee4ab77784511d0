"""Idempotent mutations: the first response to a request_id is stored and replayed."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from server.accounts.models import IdempotentResult
from server.db.database import Database
from server.validation import limit_length

Response = TypeVar("Response", bound=Message)

REQUEST_ID_MAX = 200  # idempotent_results.request_id is VARCHAR(200)


async def run_once(
    db: Database,
    tenant_id: uuid.UUID,
    method: str,
    request_id: str,
    response_type: type[Response],
    work: Callable[[AsyncSession], Awaitable[Response]],
) -> Response:
    """Runs `work` in one transaction; with a request_id, at most once per tenant and method.

    The stored response is written in the same transaction as the work, so a retry after a
    crash either finds both or neither. Two concurrent first attempts race on the primary
    key: the loser rolls back and returns the winner's response.
    """
    # Opaque: compared exactly, white space included (docs/decisions.md); NUL is refused
    # because PostgreSQL text cannot hold it.
    limit_length("request_id", request_id, REQUEST_ID_MAX)
    if not request_id:
        async with db.transaction() as session:
            return await work(session)
    conflict: IntegrityError | None = None
    for _ in range(2):
        try:
            async with db.transaction() as session:
                stored = await session.get(IdempotentResult, (tenant_id, method, request_id))
                if stored is not None:
                    return response_type.FromString(stored.response)
                response = await work(session)
                session.add(
                    IdempotentResult(
                        tenant_id=tenant_id,
                        method=method,
                        request_id=request_id,
                        response=response.SerializeToString(deterministic=True),
                    )
                )
                return response
        except IntegrityError as error:
            conflict = error
    async with db.read() as session:
        stored = await session.get(IdempotentResult, (tenant_id, method, request_id))
    if stored is None:
        assert conflict is not None
        raise conflict
    return response_type.FromString(stored.response)
