"""Builds the grpc.aio server: services, health, reflection, auth interceptor, TLS."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from isp_rating.v1 import (
    accounts_pb2,
    aggregation_pb2,
    aggregation_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    dunning_pb2,
    dunning_pb2_grpc,
    revenue_pb2,
    usage_pb2,
)
from server.accounts.servicer import register as register_accounts
from server.auth import Authenticator
from server.db.database import Database
from server.interceptors import ServiceInterceptor
from server.revenue.servicer import register as register_revenue
from server.settings import Settings
from server.usage.servicer import register as register_usage

log = logging.getLogger("server")

# Large batches of accounting records travel as single messages.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class App:
    """A configured, not yet started server and what it owns."""

    settings: Settings
    db: Database
    server: grpc.aio.Server
    health: HealthServicer
    port: int
    services: list[str]
    on_stop: list[Callable[[], object]] = field(default_factory=list)

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"listen": self.settings.listen, "port": self.port})

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first so balancers drain us, then stop with grace, then close the DB."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_s if grace_s is None else grace_s)
        for callback in self.on_stop:
            result = callback()
            if hasattr(result, "__await__"):
                await result
        await self.db.dispose()
        log.info("stopped")


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both RATING_TLS_CERT and RATING_TLS_KEY")
    pair = [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
    if settings.tls_client_ca is not None:
        return grpc.ssl_server_credentials(
            pair, root_certificates=settings.tls_client_ca.read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def build_app(settings: Settings, db: Database | None = None) -> App:
    """Wires every service onto one grpc.aio server bound to settings.listen."""
    db = db or Database(settings.database_url)
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(Authenticator(db))],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    on_stop: list[Callable[[], object]] = []
    register_accounts(server, db)
    register_usage(server, db, on_stop)
    register_revenue(server, db)
    # Services not built yet answer UNIMPLEMENTED: the generated bases do exactly that
    # (their stubs mark the methods abstract, hence the ignores).
    aggregation_pb2_grpc.add_AggregationServiceServicer_to_server(
        aggregation_pb2_grpc.AggregationServiceServicer(),  # type: ignore[abstract]
        server,
    )
    dunning_pb2_grpc.add_DunningServiceServicer_to_server(
        dunning_pb2_grpc.DunningServiceServicer(),  # type: ignore[abstract]
        server,
    )
    contracts_pb2_grpc.add_ContractServiceServicer_to_server(
        contracts_pb2_grpc.ContractServiceServicer(),  # type: ignore[abstract]
        server,
    )
    services = [
        descriptor.services_by_name[name].full_name
        for descriptor, name in (
            (accounts_pb2.DESCRIPTOR, "AccountService"),
            (usage_pb2.DESCRIPTOR, "UsageService"),
            (aggregation_pb2.DESCRIPTOR, "AggregationService"),
            (revenue_pb2.DESCRIPTOR, "RevenueService"),
            (dunning_pb2.DESCRIPTOR, "DunningService"),
            (contracts_pb2.DESCRIPTOR, "ContractService"),
        )
    ]
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    credentials = _credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    return App(settings, db, server, health_servicer, port, services, on_stop)
