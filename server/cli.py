"""The `rating` command: serve, migrate, admin, and client commands for operators."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from google.protobuf import json_format

from server import logs
from server.client import add_client_arguments, auth_metadata, client_channel, tenant_id
from server.settings import LOG_LEVELS, load_settings

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

# Contexts that contribute client commands through `add_commands(subparsers)`.
_COMMAND_MODULES = ("server.usage.cli",)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (env RATING_DATABASE_URL)")
    parser.add_argument("--data-dir", help="embedded data directory (env RATING_DATA_DIR; ./var)")


def _print_message(message: Any) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


async def _serve(args: argparse.Namespace) -> int:
    from server.lifecycle import serve

    settings = load_settings(
        database_url=args.database_url,
        listen=args.listen,
        data_dir=args.data_dir,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        log_level=args.log_level,
        log_format=args.log_format,
        grace_s=args.grace,
    )
    logs.configure(settings.log_level, settings.log_format)
    await serve(settings)
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    from server.db.migrate import downgrade, upgrade

    settings = load_settings(database_url=args.database_url, data_dir=args.data_dir)
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.downgrade:
        await downgrade(settings.database_url, args.downgrade)
    else:
        await upgrade(settings.database_url, args.revision)
    print(f"migrated {settings.database_url.split('@')[-1]}", file=sys.stderr)
    return 0


async def _create_tenant(args: argparse.Namespace) -> int:
    from server.auth import ALL_SCOPES, create_key, create_tenant
    from server.db.database import Database
    from server.settings import existing_database

    settings = load_settings(database_url=args.database_url, data_dir=args.data_dir)
    db = Database(existing_database(settings.database_url))
    try:
        tenant_id = await create_tenant(db, args.name)
        print(f"tenant_id: {tenant_id}")
        if args.with_key:
            key = await create_key(db, tenant_id, "admin", list(ALL_SCOPES))
            print(f"api_key: {key}   (shown once; store it now)")
    finally:
        await db.dispose()
    return 0


async def _create_key(args: argparse.Namespace) -> int:
    from server.auth import ALL_SCOPES, create_key
    from server.db.database import Database
    from server.settings import existing_database

    settings = load_settings(database_url=args.database_url, data_dir=args.data_dir)
    db = Database(existing_database(settings.database_url))
    scopes = list(ALL_SCOPES) if args.scopes == "all" else args.scopes.split(",")
    try:
        key = await create_key(db, args.tenant, args.name, scopes)
    finally:
        await db.dispose()
    print(key)
    print("(shown once; store it now)", file=sys.stderr)
    return 0


async def _customer_create(args: argparse.Namespace) -> int:
    from isp_rating.v1 import accounts_pb2, accounts_pb2_grpc

    customer = accounts_pb2.Customer(
        name=args.name, account_number=args.account_number, email=args.email or ""
    )
    async with client_channel(args) as channel:
        stub = accounts_pb2_grpc.AccountServiceStub(channel)
        created = await stub.CreateCustomer(
            accounts_pb2.CreateCustomerRequest(customer=customer), metadata=auth_metadata(args)
        )
    _print_message(created)
    return 0


async def _customer_get(args: argparse.Namespace) -> int:
    from isp_rating.v1 import accounts_pb2, accounts_pb2_grpc

    async with client_channel(args) as channel:
        stub = accounts_pb2_grpc.AccountServiceStub(channel)
        customer = await stub.GetCustomer(
            accounts_pb2.GetCustomerRequest(id=args.id), metadata=auth_metadata(args)
        )
    _print_message(customer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rating", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    _add_server_arguments(serve)
    serve.add_argument("--listen", help="host:port (env RATING_LISTEN; 127.0.0.1:50051)")
    serve.add_argument("--tls-cert", help="server certificate PEM (env RATING_TLS_CERT)")
    serve.add_argument("--tls-key", help="server private key PEM (env RATING_TLS_KEY)")
    serve.add_argument(
        "--tls-client-ca", help="CA for client certificates: mutual TLS (env RATING_TLS_CLIENT_CA)"
    )
    serve.add_argument("--log-level", help=f"{', '.join(LOG_LEVELS)} (env RATING_LOG_LEVEL; INFO)")
    serve.add_argument("--log-format", choices=["json", "text"], help="env RATING_LOG_FORMAT")
    serve.add_argument("--grace", type=float, help="seconds to drain on shutdown (RATING_GRACE_S)")
    serve.set_defaults(handler=_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    _add_server_arguments(migrate)
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    migrate.set_defaults(handler=_migrate)

    admin = sub.add_parser("admin", help="tenants and API keys (direct database access)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    tenant = admin_sub.add_parser("create-tenant", help="create a tenant")
    _add_server_arguments(tenant)
    tenant.add_argument("name")
    tenant.add_argument("--with-key", action="store_true", help="also print an all-scopes key")
    tenant.set_defaults(handler=_create_tenant)
    key = admin_sub.add_parser("create-key", help="create an API key; printed once")
    _add_server_arguments(key)
    key.add_argument("--tenant", required=True, type=tenant_id, help="tenant id")
    key.add_argument("--name", default="cli")
    key.add_argument("--scopes", default="all", help="comma-separated scopes, or 'all'")
    key.set_defaults(handler=_create_key)

    customers = sub.add_parser("customers", help="create and read customers")
    customers_sub = customers.add_subparsers(dest="customers_command", required=True)
    create = customers_sub.add_parser("create", help="create a customer; prints it as JSON")
    add_client_arguments(create)
    create.add_argument("--name", required=True)
    create.add_argument("--account-number", required=True)
    create.add_argument("--email")
    create.set_defaults(handler=_customer_create)
    get = customers_sub.add_parser("get", help="print a customer as JSON")
    add_client_arguments(get)
    get.add_argument("id")
    get.set_defaults(handler=_customer_get)

    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        add_commands = getattr(module, "add_commands", None)
        if add_commands is not None:
            add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        code = asyncio.run(handler(args))
        sys.stdout.flush()  # here, so that a closed pipe is met below, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`rating sessions | head`): nothing is wrong
        # here and there is nobody to tell. Further writes to stdout at exit would raise
        # again, so it goes to /dev/null; 141 is what a shell reports for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        line = error_line(error)
        if line is None:
            raise  # a bug, not bad input: the traceback is what to report
        sub = getattr(args, f"{args.command}_command", None)  # admin, customers, nas
        command = f"{args.command} {sub}" if sub else args.command
        print(f"rating {command}: {line}", file=sys.stderr)
        return 1


def error_line(error: BaseException) -> str | None:
    """One line saying what went wrong, for errors that come from the command's input or its
    surroundings (server, database, files); None for anything else."""
    import grpc
    from alembic.util.exc import CommandError
    from sqlalchemy import exc as sa_exc

    from rating_core import RatingError
    from server.errors import DomainError
    from server.settings import SettingsError

    if isinstance(error, grpc.aio.AioRpcError):
        text = f"{error.code().name}: {error.details()}"
    elif isinstance(error, (DomainError, SettingsError, RatingError, CommandError)):
        text = str(error)
    elif isinstance(error, OSError):
        text = error.strerror or str(error)
        if error.filename is not None:
            text = f"{error.filename}: {text}"
        elif isinstance(error, ConnectionError):  # the database (gRPC raises AioRpcError)
            text = f"cannot connect: {text}"
    elif isinstance(error, sa_exc.ArgumentError):
        text = f"database URL: {error}"
    elif isinstance(error, sa_exc.DBAPIError):
        cause = str(error.orig).strip().splitlines() or [type(error.orig).__name__]
        text = f"database: {cause[0]}"
        if any(word in text for word in ("no such table", "does not exist")):
            text += " (is it migrated? `rating migrate`)"
    else:
        return None
    return " ".join(text.split())
