"""Domain errors: what went wrong in business terms; the interceptor maps them to gRPC codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client is meant to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(DomainError):
    """Bad input; names the offending field (dotted path, e.g. ``customer.cpe_mac``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFoundError(DomainError):
    """An id that does not exist for the caller's tenant."""

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident} not found")


class AlreadyExistsError(DomainError):
    """A unique value (number, code, RADIUS identity) already taken within the tenant."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FailedPreconditionError(DomainError):
    """The resource is in the wrong state for this operation."""


class AbortedError(DomainError):
    """A concurrent change won an optimistic race; retrying may succeed."""


class UnavailableError(DomainError):
    """The database or another dependency cannot be reached."""


class UnauthenticatedError(DomainError):
    """Missing, malformed or unknown credentials."""


class PermissionDeniedError(DomainError):
    """Valid credentials without the scope this call needs."""
