"""BSS adapters for Pedkai: the contract's ABC and models, the rating-service and mock adapters."""

from bss.contract import BillingAccountInfo, BSSAdapter, RevenueResult
from bss.factory import create_adapter, register_adapter
from bss.grpc_adapter import RatingServiceBSSAdapter
from bss.mock_adapter import MockBSSAdapter

__all__ = [
    "BSSAdapter",
    "BillingAccountInfo",
    "MockBSSAdapter",
    "RatingServiceBSSAdapter",
    "RevenueResult",
    "create_adapter",
    "register_adapter",
]
