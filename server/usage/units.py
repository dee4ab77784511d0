"""The units RecordUsage accepts for each usage type, and their size in the type's base unit.

DATA, VOICE and SMS take a fixed set of spellings, case-sensitive so that "kB" (kilobyte)
never passes for "kb" (kilobit); CUSTOM takes any non-empty unit, whose meaning is the
custom type's. Data sizes are SI (1 GB = 10^9 bytes, as a plan's `overage_unit_bytes`
counts them) or IEC (1 GiB = 2^30 bytes). DATA and SMS must come to whole bytes and
messages; voice may be fractional seconds.
"""

from __future__ import annotations

from decimal import Decimal, localcontext

from server.errors import InvalidArgumentError

# isp_rating.v1.UsageType (domain code does not import the stubs).
DATA, VOICE, SMS, CUSTOM = 1, 2, 3, 4
TYPE_NAMES = {DATA: "DATA", VOICE: "VOICE", SMS: "SMS", CUSTOM: "CUSTOM"}

# Each type's base unit comes first, with factor 1.
UNITS: dict[int, dict[str, int]] = {
    DATA: {
        "bytes": 1,
        "kB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KiB": 2**10,
        "MiB": 2**20,
        "GiB": 2**30,
        "TiB": 2**40,
    },
    VOICE: {"seconds": 1, "minutes": 60},
    SMS: {"messages": 1, "sms": 1},
}
# Types whose base quantity is a count: a fraction of a byte or a message is refused.
WHOLE = frozenset({DATA, SMS})
# Enough digits for NUMERIC(30, 9) times 2^40 without rounding.
_PRECISION = 64


def base_quantity(usage_type: int, unit: str, quantity: Decimal) -> Decimal:
    """`quantity` in the type's base unit (bytes, seconds, messages); CUSTOM as given.

    Raises InvalidArgumentError naming `unit` when the type does not take the unit, or
    `quantity` when DATA or SMS would not come to a whole number of bytes or messages.
    """
    if usage_type == CUSTOM:
        return quantity
    accepted = UNITS.get(usage_type)
    if accepted is None:
        raise InvalidArgumentError("usage_type", f"unknown value {usage_type}")
    factor = accepted.get(unit)
    if factor is None:
        names = ", ".join(accepted)
        raise InvalidArgumentError(
            "unit", f"{unit!r} is not a unit of {TYPE_NAMES[usage_type]} usage (one of: {names})"
        )
    with localcontext() as context:
        context.prec = _PRECISION
        base = quantity * factor
        if usage_type in WHOLE and base != base.to_integral_value():
            raise InvalidArgumentError(
                "quantity",
                f"{quantity} {unit} is not a whole number of {next(iter(accepted))}",
            )
    return base
