"""API keys, scopes and the authenticated principal of the current request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import select

from server.db.database import Database
from server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from server.tenants.models import ApiKey, Tenant

ALL_SCOPES: tuple[str, ...] = (
    "accounts:read",
    "accounts:write",
    "usage:read",
    "usage:write",
    "billing:read",
    "billing:write",
    "revenue:read",
    "dunning:read",
    "dunning:write",
    "contracts:read",
    "contracts:write",
)

# The scope family of each service; the method name decides read or write.
SERVICE_SCOPES = {
    "isp_rating.v1.AccountService": "accounts",
    "isp_rating.v1.UsageService": "usage",
    "isp_rating.v1.AggregationService": "billing",
    "isp_rating.v1.RevenueService": "revenue",
    "isp_rating.v1.DunningService": "dunning",
    "isp_rating.v1.ContractService": "contracts",
}
_READ_PREFIXES = ("Get", "List", "Check", "Quote", "Compute")

KEY_PREFIX = "rk"


@dataclass(frozen=True)
class Principal:
    """Who is calling: one tenant, one key, its scopes."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDeniedError(f"this key lacks the scope {scope!r}")


current_principal: ContextVar[Principal] = ContextVar("current_principal")


def principal() -> Principal:
    """The principal of the request being served (set by the interceptor)."""
    try:
        return current_principal.get()
    except LookupError:
        raise UnauthenticatedError("no authenticated principal") from None


def required_scope(full_method: str) -> str | None:
    """`/isp_rating.v1.AccountService/GetCustomer` → `accounts:read`; None = no auth needed."""
    service, _, method = full_method.lstrip("/").partition("/")
    family = SERVICE_SCOPES.get(service)
    if family is None:
        return None
    if family == "revenue":
        return "revenue:read"
    return f"{family}:read" if method.startswith(_READ_PREFIXES) else f"{family}:write"


def _hash_secret(secret: str) -> str:
    # The secret is 256 random bits, so a fast hash suffices: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def format_key(key_id: uuid.UUID, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id.hex}_{secret}"


def parse_key(token: str) -> tuple[uuid.UUID, str]:
    prefix, _, rest = token.partition("_")
    key_hex, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not secret:
        raise UnauthenticatedError("malformed API key")
    try:
        return uuid.UUID(hex=key_hex), secret
    except ValueError:
        raise UnauthenticatedError("malformed API key") from None


def validate_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise InvalidArgumentError("scopes", f"unknown scopes {unknown}; known: {ALL_SCOPES}")
    return sorted(set(scopes))


async def create_tenant(db: Database, name: str) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    async with db.transaction() as session:
        session.add(Tenant(tenant_id=tenant_id, name=name))
    return tenant_id


async def create_key(db: Database, tenant_id: uuid.UUID, name: str, scopes: list[str]) -> str:
    """Creates a key and returns it in full; only its hash is kept."""
    scopes = validate_scopes(scopes)
    key_id = uuid.uuid4()
    secret = secrets.token_urlsafe(32)
    async with db.transaction() as session:
        if await session.get(Tenant, tenant_id) is None:
            raise NotFoundError("tenant", tenant_id)
        session.add(
            ApiKey(
                tenant_id=tenant_id,
                id=key_id,
                name=name,
                secret_hash=_hash_secret(secret),
                scopes=scopes,
            )
        )
    return format_key(key_id, secret)


@dataclass
class _CachedKey:
    secret_hash: str
    principal: Principal | None
    expires: float


class Authenticator:
    """Verifies bearer keys against the database, with a short cache so that a revoked key
    stops working within `ttl_s` without a database round trip on every call."""

    def __init__(self, db: Database, ttl_s: float = 30.0) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._cache: dict[uuid.UUID, _CachedKey] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise UnauthenticatedError("missing authorization metadata (Bearer <key>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("authorization must be 'Bearer <key>'")
        key_id, secret = parse_key(token.strip())
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is None or cached.expires < now:
            cached = await self._load(key_id, now)
        if cached.principal is None or not hmac.compare_digest(
            cached.secret_hash, _hash_secret(secret)
        ):
            raise UnauthenticatedError("invalid API key")
        return cached.principal

    async def _load(self, key_id: uuid.UUID, now: float) -> _CachedKey:
        async with self._db.read() as session:
            row = (await session.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar()
        if row is None or row.revoked_at is not None:
            entry = _CachedKey("", None, now + self._ttl_s)
        else:
            entry = _CachedKey(
                row.secret_hash,
                Principal(row.tenant_id, row.id, frozenset(row.scopes)),
                now + self._ttl_s,
            )
        self._cache[key_id] = entry
        return entry
