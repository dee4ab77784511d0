"""RatingServiceBSSAdapter: Pedkai's BSSAdapter over RevenueService (gRPC, async).

- One tenant per adapter, bound in the constructor and sent as `x-tenant-id`; the server
  refuses a key of another tenant.
- Bearer token and TLS/mTLS files are re-read when they change (rotation without restart).
- Deadlines inside the contract's SLA: 0.4 s for one customer, 1.5 s for a whole batch.
- Batches over 200 ids are split, sent concurrently and merged.
- A circuit breaker fails fast after repeated failures.
- Any failure gives the degraded result (never an exception); fees are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import grpc

from bss.breaker import CircuitBreaker
from bss.contract import BillingAccountInfo, BSSAdapter, RevenueResult, to_contract_float
from bss.credentials import TlsFiles, TokenSource
from bss.valuation import degraded, distinct, revenue_result
from isp_rating.v1 import revenue_pb2, revenue_pb2_grpc

log = logging.getLogger("bss.rating_service")

SOURCE = "isp-rating"
MAX_IDS_PER_CALL = 200
# The contract's SLA is 500 ms for one customer and 2 s for a batch: leave room for Pedkai.
SINGLE_TIMEOUT_S = 0.4
BATCH_TIMEOUT_S = 1.5
# Concurrent sub-batches of one large batch.
MAX_CONCURRENT_CALLS = 8
# How long a replaced channel (rotated TLS files) keeps serving calls already in flight.
_CHANNEL_DRAIN_S = 5.0


class BreakerOpenError(Exception):
    """The circuit breaker is open: the call was not attempted."""


class RatingServiceBSSAdapter(BSSAdapter):
    """The production adapter: live data from the rating service (`is_estimate=False`)."""

    source = SOURCE

    def __init__(
        self,
        target: str,
        tenant_id: UUID,
        token: TokenSource,
        *,
        tls: TlsFiles | None = None,
        insecure: bool = False,
        currency: str = "GBP",
        single_timeout_s: float = SINGLE_TIMEOUT_S,
        batch_timeout_s: float = BATCH_TIMEOUT_S,
        max_ids_per_call: int = MAX_IDS_PER_CALL,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ValueError("TLS files are required unless insecure=True (loopback tests)")
        self._target = target
        self._tenant_id = tenant_id
        self._token = token
        self._tls = tls
        self._currency = currency.upper()
        self._single_timeout_s = single_timeout_s
        self._batch_timeout_s = batch_timeout_s
        self._max_ids = max_ids_per_call
        self.breaker = breaker or CircuitBreaker()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._tls_stamp: tuple[tuple[int, int], ...] | None = None
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def tenant_id(self) -> UUID:
        return self._tenant_id

    # ------------------------------------------------------------------ plumbing

    def _current_stub(self) -> Any:
        """The stub of the current channel, rebuilt when the TLS files changed."""
        stamp = self._tls.stamp() if self._tls is not None else None
        if self._stub is None or stamp != self._tls_stamp:
            old = self._channel
            if self._tls is None:
                self._channel = grpc.aio.insecure_channel(self._target)
            else:
                credentials = self._tls.channel_credentials()
                self._channel = grpc.aio.secure_channel(self._target, credentials)
                if old is not None:
                    log.info("TLS files changed: new channel to %s", self._target)
            self._tls_stamp = stamp
            self._stub = revenue_pb2_grpc.RevenueServiceStub(self._channel)
            if old is not None:
                task = asyncio.get_running_loop().create_task(self._drain(old))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
        return self._stub

    @staticmethod
    async def _drain(channel: grpc.aio.Channel) -> None:
        await channel.close(grace=_CHANNEL_DRAIN_S)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("authorization", f"Bearer {self._token.token()}"),
            ("x-tenant-id", str(self._tenant_id)),
        )

    def _enter(self) -> tuple[Any, tuple[tuple[str, str], ...]]:
        if not self.breaker.allow():
            raise BreakerOpenError("circuit open")
        return self._current_stub(), self._metadata()

    def _failed(self, call: str, error: BaseException, started: float) -> None:
        if not isinstance(error, BreakerOpenError):
            self.breaker.failure()
        # The reason only (a status code or exception type): never request or response data.
        reason = (
            error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
        )
        log.warning(
            "%s failed after %.1f ms (%s); breaker %s",
            call,
            (time.perf_counter() - started) * 1000,
            reason,
            self.breaker.state,
        )

    def _chunks(self, ids: Sequence[UUID]) -> list[list[str]]:
        return [
            [str(i) for i in ids[start : start + self._max_ids]]
            for start in range(0, len(ids), self._max_ids)
        ]

    async def _batched(self, method: Any, requests: list[Any], metadata: Any) -> list[Any]:
        """Sends the sub-batches concurrently under one deadline; any failure fails all."""
        deadline = time.monotonic() + self._batch_timeout_s
        limit = asyncio.Semaphore(MAX_CONCURRENT_CALLS)

        async def one(request: Any) -> Any:
            async with limit:
                remaining = max(deadline - time.monotonic(), 0.001)
                return await method(request, timeout=remaining, metadata=metadata)

        async with asyncio.timeout(self._batch_timeout_s):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(request)) for request in requests]
        return [task.result() for task in tasks]

    # ------------------------------------------------------------------ the contract

    async def get_billing_account(self, customer_id: UUID) -> BillingAccountInfo | None:
        """None when the customer is unknown, and (logged) when the service cannot answer."""
        started = time.perf_counter()
        try:
            stub, metadata = self._enter()
            reply = await stub.GetBillingAccount(
                revenue_pb2.GetBillingAccountRequest(customer_id=str(customer_id)),
                timeout=self._single_timeout_s,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                self.breaker.success()
                return None
            self._failed("get_billing_account", error, started)
            return None
        except Exception as error:
            self._failed("get_billing_account", error, started)
            return None
        self.breaker.success()
        fee = reply.monthly_fee if reply.HasField("monthly_fee") else None
        return BillingAccountInfo(
            customer_id=customer_id,
            account_id=UUID(reply.account_id) if reply.account_id else None,
            plan_name=reply.plan_name or None,
            # Several currencies: no single fee (the contract's field has one currency).
            monthly_fee=None if fee is None else to_contract_float(Decimal(fee.amount)),
            currency=fee.currency_code if fee is not None else self._currency,
        )

    async def get_revenue_at_risk(self, customer_ids: list[UUID]) -> RevenueResult:
        """Valued in the adapter's currency; other currencies make a customer unpriced."""
        ids = distinct(customer_ids)
        if not ids:
            return revenue_result(Decimal(0), 0, 0, source=self.source, is_estimate=False)
        started = time.perf_counter()
        try:
            stub, metadata = self._enter()
            replies = await self._batched(
                stub.GetRevenueAtRisk,
                [
                    revenue_pb2.GetRevenueAtRiskRequest(
                        customer_ids=chunk, currency_code=self._currency
                    )
                    for chunk in self._chunks(ids)
                ],
                metadata,
            )
        except Exception as error:
            self._failed("get_revenue_at_risk", error, started)
            return degraded(self.source, len(ids))
        self.breaker.success()
        total = sum((Decimal(r.in_currency.total.amount or "0") for r in replies), Decimal(0))
        priced = sum(r.in_currency.customer_count for r in replies)
        log.info(
            "revenue at risk: %d ids, %d priced, %d calls, %.1f ms",
            len(ids),
            priced,
            len(replies),
            (time.perf_counter() - started) * 1000,
        )
        return revenue_result(total, priced, len(ids), source=self.source, is_estimate=False)

    async def check_disputes(self, customer_ids: list[UUID]) -> list[UUID]:
        """Customers with a dispute open within the last 30 days; [] (logged) on failure."""
        ids = distinct(customer_ids)
        if not ids:
            return []
        started = time.perf_counter()
        try:
            stub, metadata = self._enter()
            replies = await self._batched(
                stub.CheckDisputes,
                [revenue_pb2.CheckDisputesRequest(customer_ids=c) for c in self._chunks(ids)],
                metadata,
            )
        except Exception as error:
            self._failed("check_disputes", error, started)
            return []
        self.breaker.success()
        found = {UUID(value) for reply in replies for value in reply.customer_ids}
        return [customer_id for customer_id in ids if customer_id in found]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
        self._channel, self._stub = None, None
        for task in list(self._draining):
            await task

    async def __aenter__(self) -> RatingServiceBSSAdapter:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
