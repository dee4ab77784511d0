"""What only the gRPC adapter has: credentials and their rotation, TLS, tenant binding,
deadlines, the circuit breaker, and the factory."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from bss import MockBSSAdapter, RatingServiceBSSAdapter, create_adapter, register_adapter
from bss.breaker import CircuitBreaker
from bss.credentials import TlsFiles, TokenSource
from isp_rating.v1 import revenue_pb2, revenue_pb2_grpc
from server.db.database import Database
from tests.revenue.support import RevenueServer, Seeder, make_tenant, start_revenue_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str | bytes) -> None:
    """Rewrites a credential file and moves its mtime on (rotation as an operator does it)."""
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    stamp = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
async def live(revenue_db: Database) -> AsyncIterator[tuple[RevenueServer, Seeder, str]]:
    tenant = await make_tenant(revenue_db)
    server = await start_revenue_server(revenue_db)
    try:
        yield server, Seeder(revenue_db, tenant.tenant_id), tenant.key
    finally:
        await server.stop()


# ---------------------------------------------------------------- circuit breaker


def test_breaker_opens_when_failures_reach_the_threshold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_breaker_lets_one_trial_through_when_reset_time_has_passed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    breaker.failure()
    clock.now = 10.0
    assert breaker.allow()
    assert not breaker.allow()  # one trial at a time
    breaker.failure()
    assert breaker.state == "open"
    clock.now = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"


async def test_adapter_fails_fast_when_breaker_is_open(
    live: tuple[RevenueServer, Seeder, str],
) -> None:
    server, seeder, key = live
    customer = await seeder.priced_customer(1000)
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    async with RatingServiceBSSAdapter(
        server.target,
        seeder.tenant_id,
        TokenSource(env_var="K", environ={"K": key}),
        insecure=True,
        breaker=breaker,
    ) as adapter:
        breaker.failure()
        result = await adapter.get_revenue_at_risk([customer])
        assert result.total_revenue_at_risk is None
        assert server.servicer.batch_sizes == []  # never called
        clock.now = 10.0
        result = await adapter.get_revenue_at_risk([customer])
        assert result.total_revenue_at_risk == 10.0
        assert breaker.state == "closed"


async def test_adapter_opens_the_breaker_when_the_service_is_unreachable() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    async with RatingServiceBSSAdapter(
        "127.0.0.1:1",
        uuid.uuid4(),
        TokenSource(env_var="K", environ={"K": "rk_x_y"}),
        insecure=True,
        breaker=breaker,
    ) as adapter:
        for _ in range(2):
            result = await adapter.get_revenue_at_risk([uuid.uuid4()])
            assert result.total_revenue_at_risk is None
        assert breaker.state == "open"
        started = time.perf_counter()
        result = await adapter.get_revenue_at_risk([uuid.uuid4(), uuid.uuid4()])
        assert time.perf_counter() - started < 0.05
        assert result.unpriced_customer_count == 2


# ---------------------------------------------------------------- deadlines


class SlowServicer(revenue_pb2_grpc.RevenueServiceServicer):
    async def GetRevenueAtRisk(
        self, request: revenue_pb2.GetRevenueAtRiskRequest, context: Any
    ) -> revenue_pb2.GetRevenueAtRiskResponse:
        await asyncio.sleep(5)
        return revenue_pb2.GetRevenueAtRiskResponse()

    async def GetBillingAccount(
        self, request: revenue_pb2.GetBillingAccountRequest, context: Any
    ) -> revenue_pb2.BillingAccount:
        await asyncio.sleep(5)
        return revenue_pb2.BillingAccount()

    async def CheckDisputes(
        self, request: revenue_pb2.CheckDisputesRequest, context: Any
    ) -> revenue_pb2.CheckDisputesResponse:
        await asyncio.sleep(5)
        return revenue_pb2.CheckDisputesResponse()


async def test_adapter_degrades_within_the_deadline_when_the_service_is_slow() -> None:
    server = grpc.aio.server()
    revenue_pb2_grpc.add_RevenueServiceServicer_to_server(SlowServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with RatingServiceBSSAdapter(
            f"127.0.0.1:{port}",
            uuid.uuid4(),
            TokenSource(env_var="K", environ={"K": "rk_x_y"}),
            insecure=True,
            single_timeout_s=0.1,
            batch_timeout_s=0.2,
        ) as adapter:
            started = time.perf_counter()
            result = await adapter.get_revenue_at_risk([uuid.uuid4() for _ in range(450)])
            assert time.perf_counter() - started < 1.0
            assert result.total_revenue_at_risk is None
            assert result.unpriced_customer_count == 450
            started = time.perf_counter()
            assert await adapter.get_billing_account(uuid.uuid4()) is None
            assert time.perf_counter() - started < 1.0
    finally:
        await server.stop(0)


# ---------------------------------------------------------------- credentials


async def test_adapter_uses_the_new_token_when_the_token_file_is_rotated(
    live: tuple[RevenueServer, Seeder, str], revenue_db: Database, tmp_path: Path
) -> None:
    server, seeder, key = live
    customer = await seeder.priced_customer(1000)
    from server.auth import ALL_SCOPES, create_key

    second_key = await create_key(revenue_db, seeder.tenant_id, "rotated", list(ALL_SCOPES))
    token_file = tmp_path / "token"
    _write(token_file, key + "\n")
    async with RatingServiceBSSAdapter(
        server.target, seeder.tenant_id, TokenSource(path=token_file), insecure=True
    ) as adapter:
        assert (await adapter.get_revenue_at_risk([customer])).total_revenue_at_risk == 10.0
        _write(token_file, "rk_00000000000000000000000000000000_revoked")
        assert (await adapter.get_revenue_at_risk([customer])).total_revenue_at_risk is None
        _write(token_file, second_key)
        assert (await adapter.get_revenue_at_risk([customer])).total_revenue_at_risk == 10.0


async def test_adapter_is_refused_when_bound_to_another_tenant(
    live: tuple[RevenueServer, Seeder, str],
) -> None:
    server, seeder, key = live
    customer = await seeder.priced_customer(1000)
    async with RatingServiceBSSAdapter(
        server.target, uuid.uuid4(), TokenSource(env_var="K", environ={"K": key}), insecure=True
    ) as adapter:
        result = await adapter.get_revenue_at_risk([customer])
        assert result.total_revenue_at_risk is None
        assert result.is_estimate is True


async def test_adapter_speaks_mutual_tls_and_reloads_rotated_client_certificates(
    revenue_db: Database, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    credentials = grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    tenant = await make_tenant(revenue_db)
    seeder = Seeder(revenue_db, tenant.tenant_id)
    customer = await seeder.priced_customer(1000)
    server = await start_revenue_server(revenue_db, credentials)
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))

    def install(issuer: trustme.CA) -> None:
        client = issuer.issue_cert("pedkai-client")
        _write(cert_file, b"".join(p.bytes() for p in client.cert_chain_pems))
        _write(key_file, client.private_key_pem.bytes())

    _write(ca_file, ca.cert_pem.bytes())
    install(ca)
    try:
        async with RatingServiceBSSAdapter(
            server.target,
            tenant.tenant_id,
            TokenSource(env_var="K", environ={"K": tenant.key}),
            tls=TlsFiles(ca_file, cert_file, key_file),
        ) as adapter:
            assert (await adapter.get_revenue_at_risk([customer])).total_revenue_at_risk == 10.0
            install(trustme.CA())  # a certificate the server does not trust
            assert (await adapter.get_revenue_at_risk([customer])).total_revenue_at_risk is None
            install(ca)
            assert (await adapter.get_revenue_at_risk([customer])).total_revenue_at_risk == 10.0
    finally:
        await server.stop()


def test_token_source_refuses_when_no_token_is_configured() -> None:
    from bss.credentials import CredentialsError

    with pytest.raises(CredentialsError):
        TokenSource(env_var="MISSING", environ={}).token()


# ---------------------------------------------------------------- factory


def test_factory_builds_the_rating_adapter_when_configured() -> None:
    tenant_id = uuid.uuid4()
    adapter = create_adapter(
        {
            "BSS_ADAPTER": "isp-rating",
            "BSS_RATING_TARGET": "127.0.0.1:50051",
            "BSS_RATING_TENANT_ID": str(tenant_id),
            "BSS_RATING_TOKEN": "rk_a_b",
            "BSS_RATING_INSECURE": "1",
        }
    )
    assert isinstance(adapter, RatingServiceBSSAdapter)
    assert adapter.tenant_id == tenant_id


def test_factory_builds_the_mock_when_configured() -> None:
    adapter = create_adapter({"BSS_ADAPTER": "mock", "BSS_CURRENCY": "EUR"})
    assert isinstance(adapter, MockBSSAdapter)
    assert adapter.currency == "EUR"


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"BSS_ADAPTER": "nope"},
        # Plaintext must be asked for explicitly.
        {
            "BSS_ADAPTER": "isp-rating",
            "BSS_RATING_TARGET": "h:1",
            "BSS_RATING_TENANT_ID": str(uuid.uuid4()),
        },
        {"BSS_ADAPTER": "isp-rating", "BSS_RATING_INSECURE": "1"},
    ],
)
def test_factory_refuses_when_configuration_is_incomplete(config: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"BSS_|TLS"):
        create_adapter(config)


def test_factory_builds_a_registered_adapter_when_named() -> None:
    register_adapter("custom", lambda config: MockBSSAdapter(source=config["BSS_ADAPTER"]))
    adapter = create_adapter({"BSS_ADAPTER": "custom"})
    assert isinstance(adapter, MockBSSAdapter)
    assert adapter.source == "custom"
