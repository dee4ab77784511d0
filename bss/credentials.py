"""Credentials of the gRPC adapter, re-read when they change: bearer token and TLS files.

Nothing secret is ever in code or logs. Rotation needs no restart: a token file or TLS file
whose modification time or size changes is read again on the next call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc


class CredentialsError(Exception):
    """A credential is missing or unreadable."""


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


@dataclass
class TokenSource:
    """A bearer token from a file (preferred: rotates in place) or an environment variable."""

    path: Path | None = None
    env_var: str | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)
    _stamp: tuple[int, int] | None = field(default=None, repr=False)
    _token: str = field(default="", repr=False)

    def token(self) -> str:
        if self.path is not None:
            try:
                stamp = _stamp(self.path)
                if stamp != self._stamp:
                    self._token = self.path.read_text().strip()
                    self._stamp = stamp
            except OSError as error:
                raise CredentialsError(f"cannot read the token file {self.path}") from error
            if self._token:
                return self._token
            raise CredentialsError(f"the token file {self.path} is empty")
        if self.env_var is not None:
            value = self.environ.get(self.env_var, "").strip()
            if value:
                return value
            raise CredentialsError(f"the environment variable {self.env_var} is empty")
        raise CredentialsError("no token source configured")


@dataclass
class TlsFiles:
    """Server CA (TLS) and, for mutual TLS, the client certificate chain and key (PEM files)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mutual TLS needs both the client certificate and its key")

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """Changes whenever one of the files is replaced (checked before every call)."""
        try:
            return tuple(_stamp(p) for p in (self.ca, self.cert, self.key) if p is not None)
        except OSError as error:
            raise CredentialsError("cannot stat the TLS files") from error

    def channel_credentials(self) -> grpc.ChannelCredentials:
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes() if self.ca else None,
                private_key=self.key.read_bytes() if self.key else None,
                certificate_chain=self.cert.read_bytes() if self.cert else None,
            )
        except OSError as error:
            raise CredentialsError("cannot read the TLS files") from error
