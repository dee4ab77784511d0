"""The server as a whole: health, reflection, unimplemented services, bounded error
messages, shutdown, TLS."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from isp_rating.v1 import accounts_pb2 as pb
from isp_rating.v1 import (
    accounts_pb2_grpc,
    dunning_pb2,
    dunning_pb2_grpc,
    revenue_pb2,
    revenue_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from server.app import build_app
from server.settings import Settings
from tests.conftest import Backend, RunningServer, TenantCtx, new_tenant


async def test_health_reports_serving_for_every_service(
    channel: grpc.aio.Channel, server: RunningServer
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", *server.app.services]:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_reflection_lists_all_six_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for reply in stub.ServerReflectionInfo(one_request()):
        names = {s.name for s in reply.list_services_response.service}
    assert {
        f"isp_rating.v1.{name}"
        for name in (
            "AccountService",
            "UsageService",
            "AggregationService",
            "RevenueService",
            "DunningService",
            "ContractService",
        )
    } <= names


async def test_service_not_built_yet_answers_unimplemented_after_auth(
    channel: grpc.aio.Channel, tenant: TenantCtx
) -> None:
    dunning = dunning_pb2_grpc.DunningServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await dunning.ListCampaigns(dunning_pb2.ListCampaignsRequest())
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await dunning.ListCampaigns(dunning_pb2.ListCampaignsRequest(), metadata=tenant.metadata)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


Call = Callable[[grpc.aio.Channel, TenantCtx, str], Awaitable[object]]


def _long_session_id(value: str) -> str:
    """A well-formed session id whose NAS key is `value`: unknown, so NOT_FOUND."""
    return base64.urlsafe_b64encode(f"{value}\x1fsid\x1f1".encode()).decode().rstrip("=")


# RPCs of three services whose errors quote the value they were given.
QUOTING_CALLS: dict[str, tuple[Call, grpc.StatusCode, str]] = {
    "GetSession id": (
        lambda chan, tenant, value: usage_pb2_grpc.UsageServiceStub(chan).GetSession(
            usage_pb2.GetSessionRequest(id=value), metadata=tenant.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id:",
    ),
    "GetSession unknown id": (
        lambda chan, tenant, value: usage_pb2_grpc.UsageServiceStub(chan).GetSession(
            usage_pb2.GetSessionRequest(id=_long_session_id(value)), metadata=tenant.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
        "session ",
    ),
    "UpsertNasClient source_address": (
        lambda chan, tenant, value: usage_pb2_grpc.UsageServiceStub(chan).UpsertNasClient(
            usage_pb2.UpsertNasClientRequest(source_address=value, secret="s"),
            metadata=tenant.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source_address:",
    ),
    "GetCustomer id": (
        lambda chan, tenant, value: accounts_pb2_grpc.AccountServiceStub(chan).GetCustomer(
            pb.GetCustomerRequest(id=value), metadata=tenant.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id:",
    ),
    "GetBillingAccount customer_id": (
        lambda chan, tenant, value: revenue_pb2_grpc.RevenueServiceStub(chan).GetBillingAccount(
            revenue_pb2.GetBillingAccountRequest(customer_id=value), metadata=tenant.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "customer_id:",
    ),
}


@pytest.mark.parametrize("value", ["A" * 20_000, "é" * 5_000], ids=["ascii", "non-ascii"])
@pytest.mark.parametrize("rpc", QUOTING_CALLS.values(), ids=QUOTING_CALLS.keys())
async def test_error_message_quotes_a_bounded_part_when_the_value_is_long(
    channel: grpc.aio.Channel,
    tenant: TenantCtx,
    rpc: tuple[Call, grpc.StatusCode, str],
    value: str,
) -> None:
    call, code, field = rpc
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(channel, tenant, value)
    details = caught.value.details() or ""
    # Not RESOURCE_EXHAUSTED ("Stream removed"): the client took the trailers.
    assert caught.value.code() == code, details
    assert details.startswith(field), details
    assert len(details) < 400
    assert details.endswith(" characters)")


async def test_shutdown_reports_not_serving_then_finishes_in_flight_calls(
    backend: Backend, tmp_path: Path
) -> None:
    app = build_app(Settings(database_url=backend.url, listen="127.0.0.1:0", data_dir=tmp_path))
    await app.start()
    tenant = await new_tenant(app.db)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        accounts = accounts_pb2_grpc.AccountServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(app.stop(grace_s=5))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await accounts.ListCustomers(
                pb.ListCustomersRequest(), metadata=tenant.metadata, timeout=2
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("collector@isp.example")
    out = tmp_path_factory.mktemp("pki")
    paths = {
        "ca": out / "ca.pem",
        "cert": out / "server.pem",
        "key": out / "server.key",
        "client_cert": out / "client.pem",
        "client_key": out / "client.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client_cert.private_key_pem.write_to_path(str(paths["client_key"]))
    return paths


async def _list_customers(
    target: str, credentials: grpc.ChannelCredentials, tenant: TenantCtx
) -> int:
    async with grpc.aio.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        stub = accounts_pb2_grpc.AccountServiceStub(channel)
        reply = await stub.ListCustomers(
            pb.ListCustomersRequest(), metadata=tenant.metadata, timeout=5
        )
        return len(reply.customers)


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
    backend: Backend, tmp_path: Path, pki: dict[str, Path]
) -> None:
    settings = Settings(
        database_url=backend.url,
        listen="127.0.0.1:0",
        data_dir=tmp_path,
        tls_cert=pki["cert"],
        tls_key=pki["key"],
        tls_client_ca=pki["ca"],
    )
    app = build_app(settings)
    await app.start()
    try:
        tenant = await new_tenant(app.db)
        target = f"127.0.0.1:{app.port}"
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"].read_bytes(),
            private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
        )
        assert await _list_customers(target, with_cert, tenant) == 0
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _list_customers(target, without_cert, tenant)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(0)


async def test_tls_serves_clients_that_trust_the_server_certificate(
    backend: Backend, tmp_path: Path, pki: dict[str, Path]
) -> None:
    settings = Settings(
        database_url=backend.url,
        listen="127.0.0.1:0",
        data_dir=tmp_path,
        tls_cert=pki["cert"],
        tls_key=pki["key"],
    )
    app = build_app(settings)
    await app.start()
    try:
        tenant = await new_tenant(app.db)
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        assert await _list_customers(f"127.0.0.1:{app.port}", credentials, tenant) == 0
    finally:
        await app.stop(0)
