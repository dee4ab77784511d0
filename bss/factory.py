"""Picks and builds the adapter from configuration (environment by default).

BSS_ADAPTER                 "isp-rating" or "mock" (required: no silent default)
BSS_CURRENCY                the currency revenue is valued in (default GBP)
BSS_RATING_TARGET           host:port of the rating service
BSS_RATING_TENANT_ID        the tenant this adapter serves (UUID)
BSS_RATING_TOKEN_FILE       bearer token file, re-read when it changes (preferred)
BSS_RATING_TOKEN            bearer token in the environment (when no file)
BSS_RATING_CA_FILE          server CA (PEM); enables TLS
BSS_RATING_CERT_FILE/_KEY_FILE   client certificate and key (PEM): mutual TLS
BSS_RATING_INSECURE         "1" allows plaintext (loopback tests only)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from uuid import UUID

from bss.contract import BSSAdapter
from bss.credentials import TlsFiles, TokenSource
from bss.grpc_adapter import RatingServiceBSSAdapter
from bss.mock_adapter import MockBSSAdapter

Builder = Callable[[Mapping[str, str]], BSSAdapter]


def _path(config: Mapping[str, str], name: str) -> Path | None:
    value = config.get(name, "").strip()
    return Path(value) if value else None


def _required(config: Mapping[str, str], name: str) -> str:
    value = config.get(name, "").strip()
    if not value:
        raise ValueError(f"{name} is required")
    return value


def build_rating_service(config: Mapping[str, str]) -> BSSAdapter:
    token_file = _path(config, "BSS_RATING_TOKEN_FILE")
    token = (
        TokenSource(path=token_file)
        if token_file is not None
        else TokenSource(env_var="BSS_RATING_TOKEN", environ=config)
    )
    ca, cert, key = (
        _path(config, name)
        for name in ("BSS_RATING_CA_FILE", "BSS_RATING_CERT_FILE", "BSS_RATING_KEY_FILE")
    )
    tls = TlsFiles(ca, cert, key) if (ca or cert or key) else None
    return RatingServiceBSSAdapter(
        _required(config, "BSS_RATING_TARGET"),
        UUID(_required(config, "BSS_RATING_TENANT_ID")),
        token,
        tls=tls,
        insecure=config.get("BSS_RATING_INSECURE", "") == "1",
        currency=config.get("BSS_CURRENCY", "GBP") or "GBP",
    )


def build_mock(config: Mapping[str, str]) -> BSSAdapter:
    return MockBSSAdapter(currency=config.get("BSS_CURRENCY", "GBP") or "GBP")


ADAPTERS: dict[str, Builder] = {
    "isp-rating": build_rating_service,
    "mock": build_mock,
}


def register_adapter(name: str, builder: Builder) -> None:
    """New adapters subclass BSSAdapter and register their builder under a name."""
    ADAPTERS[name] = builder


def create_adapter(config: Mapping[str, str] | None = None) -> BSSAdapter:
    """The adapter named by BSS_ADAPTER, built from `config` (default: the environment)."""
    config = os.environ if config is None else config
    name = config.get("BSS_ADAPTER", "").strip()
    builder = ADAPTERS.get(name)
    if builder is None:
        raise ValueError(f"BSS_ADAPTER must be one of {sorted(ADAPTERS)}, not {name!r}")
    return builder(config)
