"""Authentication, scopes and tenant isolation, through a real server."""

from __future__ import annotations

import grpc
import pytest

from isp_rating.v1 import accounts_pb2 as pb
from isp_rating.v1 import accounts_pb2_grpc
from tests.conftest import RunningServer, TenantCtx, new_tenant


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> accounts_pb2_grpc.AccountServiceStub:
    return accounts_pb2_grpc.AccountServiceStub(channel)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer rk_nonsense"),),
        (("authorization", "Bearer rk_0123456789abcdef0123456789abcdef_wrongsecret"),),
    ],
)
async def test_call_is_unauthenticated_when_key_is_missing_or_invalid(
    accounts: accounts_pb2_grpc.AccountServiceStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.ListCustomers(pb.ListCustomersRequest(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_call_is_unauthenticated_when_secret_is_wrong_for_a_real_key(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    forged = tenant.key[: tenant.key.rindex("_") + 1] + "x" * 43
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.ListCustomers(
            pb.ListCustomersRequest(), metadata=(("authorization", f"Bearer {forged}"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_call_is_denied_when_key_lacks_the_scope(
    accounts: accounts_pb2_grpc.AccountServiceStub, server: RunningServer
) -> None:
    reader = await new_tenant(server.db, scopes=["accounts:read"])
    listed = await accounts.ListCustomers(pb.ListCustomersRequest(), metadata=reader.metadata)
    assert list(listed.customers) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=pb.Customer(name="x")), metadata=reader.metadata
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "accounts:write" in (caught.value.details() or "")


async def test_tenant_cannot_see_or_change_rows_of_another_tenant(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx, other_tenant: TenantCtx
) -> None:
    mine = await accounts.CreateCustomer(
        pb.CreateCustomerRequest(customer=pb.Customer(name="mine", account_number="SAME")),
        metadata=tenant.metadata,
    )
    # The same account number is free in another tenant: uniqueness is per tenant.
    await accounts.CreateCustomer(
        pb.CreateCustomerRequest(customer=pb.Customer(name="theirs", account_number="SAME")),
        metadata=other_tenant.metadata,
    )
    for call in (
        accounts.GetCustomer(pb.GetCustomerRequest(id=mine.id), metadata=other_tenant.metadata),
        accounts.OpenDispute(
            pb.OpenDisputeRequest(customer_id=mine.id, reason="x"), metadata=other_tenant.metadata
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    theirs = await accounts.ListCustomers(pb.ListCustomersRequest(), metadata=other_tenant.metadata)
    assert [c.name for c in theirs.customers] == ["theirs"]
    unchanged = await accounts.GetCustomer(
        pb.GetCustomerRequest(id=mine.id), metadata=tenant.metadata
    )
    assert unchanged.name == "mine"
