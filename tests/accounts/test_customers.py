"""AccountService customers over a real channel, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from isp_rating.v1 import accounts_pb2 as pb
from isp_rating.v1 import accounts_pb2_grpc
from tests.conftest import TenantCtx


def full_customer(**overrides: object) -> pb.Customer:
    customer = pb.Customer(
        account_number="ACC-1001",
        name="Ada Lovelace",
        email="ada@example.net",
        phone="+44 20 7946 0000",
        service_address=pb.ServiceAddress(
            lines=["12 Analytical Row"],
            city="London",
            state="Greater London",
            postal_code="N1 9GU",
            country_code="gb",
            location=pb.GeoPoint(latitude="51.532000", longitude="-0.105800"),
        ),
        installation=pb.Installation(
            status=pb.INSTALLATION_STATUS_COMPLETED,
            date="2026-10-02",
            technician="T. Babbage",
            notes="ONT in hallway",
        ),
        connection_type=pb.CONNECTION_TYPE_FTTH,
        last_mile_technology=pb.LAST_MILE_TECHNOLOGY_XGS_PON,
        plan_speed_down_mbps=900,
        plan_speed_up_mbps=110,
        devices=[
            pb.Device(kind=pb.DEVICE_KIND_ONU, serial="HWTC12345678"),
            pb.Device(kind=pb.DEVICE_KIND_CPE, serial="CPE-9", mac="AA-BB-CC-00-11-22"),
        ],
        bandwidth_profile="residential-900",
        static_ipv4="198.51.100.7",
        ipv6_prefix="2001:db8:1200::/48",
        network_stats=pb.NetworkStats(uptime_percent_30d="99.95", outage_count_30d=2),
    )
    for name, value in overrides.items():
        setattr(customer, name, value)
    return customer


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> accounts_pb2_grpc.AccountServiceStub:
    return accounts_pb2_grpc.AccountServiceStub(channel)


async def test_customer_round_trips_every_isp_field_when_created(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    created = await accounts.CreateCustomer(
        pb.CreateCustomerRequest(customer=full_customer()), metadata=tenant.metadata
    )
    fetched = await accounts.GetCustomer(
        pb.GetCustomerRequest(id=created.id), metadata=tenant.metadata
    )

    assert fetched == created
    assert fetched.service_address.country_code == "GB"
    assert fetched.service_address.location.latitude == "51.532000"
    assert fetched.devices[1].mac == "aa:bb:cc:00:11:22"
    assert fetched.installation.date == "2026-10-02"
    assert fetched.network_stats.uptime_percent_30d == "99.950"
    assert fetched.last_mile_technology == pb.LAST_MILE_TECHNOLOGY_XGS_PON
    assert fetched.create_time.seconds > 0


@pytest.mark.parametrize(
    ("customer", "field"),
    [
        (full_customer(static_ipv4="300.1.1.1"), "customer.static_ipv4"),
        (full_customer(ipv6_prefix="2001:db8::1/48"), "customer.ipv6_prefix"),
        (full_customer(connection_type=42), "customer.connection_type"),
        (full_customer(name=""), "customer.name"),
        (full_customer(email="not-an-email"), "customer.email"),
    ],
)
async def test_create_customer_names_the_field_when_input_is_bad(
    accounts: accounts_pb2_grpc.AccountServiceStub,
    tenant: TenantCtx,
    customer: pb.Customer,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=customer), metadata=tenant.metadata
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_create_customer_names_the_device_when_mac_is_malformed(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    customer = full_customer()
    customer.devices[1].mac = "aa:bb:cc:dd:ee"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=customer), metadata=tenant.metadata
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "customer.devices[1].mac" in (caught.value.details() or "")


async def test_create_customer_returns_the_first_result_when_request_id_repeats(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    request = pb.CreateCustomerRequest(customer=full_customer(), request_id="req-1")
    first = await accounts.CreateCustomer(request, metadata=tenant.metadata)
    again = await accounts.CreateCustomer(request, metadata=tenant.metadata)
    listed = await accounts.ListCustomers(pb.ListCustomersRequest(), metadata=tenant.metadata)

    assert again == first
    assert [c.id for c in listed.customers] == [first.id]


async def test_request_id_is_compared_exactly_when_it_has_surrounding_white_space(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    ids = []
    for request_id in ("req-2", " req-2 ", "req-2", " req-2 "):
        created = await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=pb.Customer(name="Ada"), request_id=request_id),
            metadata=tenant.metadata,
        )
        ids.append(created.id)
    assert ids[0] != ids[1]
    assert ids[2:] == ids[:2]


@pytest.mark.parametrize("request_id", ["r\x00", "r" * 201], ids=["NUL", "201 characters"])
async def test_create_customer_names_request_id_when_the_database_cannot_hold_it(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx, request_id: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=pb.Customer(name="Ada"), request_id=request_id),
            metadata=tenant.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("request_id:")


async def test_create_customer_is_refused_when_account_number_is_taken(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    await accounts.CreateCustomer(
        pb.CreateCustomerRequest(customer=full_customer()), metadata=tenant.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=full_customer()), metadata=tenant.metadata
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "customer.account_number" in (caught.value.details() or "")


async def test_update_customer_changes_only_masked_fields_when_mask_given(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    created = await accounts.CreateCustomer(
        pb.CreateCustomerRequest(customer=full_customer()), metadata=tenant.metadata
    )
    change = pb.Customer(id=created.id, email="ada@analytical.example", phone="ignored")
    updated = await accounts.UpdateCustomer(
        pb.UpdateCustomerRequest(customer=change, update_mask=FieldMask(paths=["email"])),
        metadata=tenant.metadata,
    )
    assert updated.email == "ada@analytical.example"
    assert updated.phone == created.phone
    assert updated.name == created.name


async def test_list_customers_pages_through_all_when_page_size_is_small(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    created = set()
    for i in range(5):
        customer = await accounts.CreateCustomer(
            pb.CreateCustomerRequest(customer=pb.Customer(name=f"c{i}")), metadata=tenant.metadata
        )
        created.add(customer.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await accounts.ListCustomers(
            pb.ListCustomersRequest(page_size=2, page_token=token), metadata=tenant.metadata
        )
        seen.extend(c.id for c in page.customers)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(created)


async def test_import_customers_writes_all_or_none_when_one_is_bad(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    async def requests() -> object:
        yield pb.ImportCustomersRequest(customers=[pb.Customer(name=f"ok{i}") for i in range(3)])
        yield pb.ImportCustomersRequest(
            customers=[pb.Customer(name="bad", static_ipv4="1.2.3"), pb.Customer(name="ok")]
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.ImportCustomers(requests(), metadata=tenant.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "customers[3].static_ipv4" in (caught.value.details() or "")
    listed = await accounts.ListCustomers(pb.ListCustomersRequest(), metadata=tenant.metadata)
    assert list(listed.customers) == []


async def test_import_customers_loads_every_customer_when_streamed_in_chunks(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    async def requests() -> object:
        for chunk in range(4):
            yield pb.ImportCustomersRequest(
                customers=[
                    full_customer(account_number=f"IMP-{chunk}-{i}", name=f"n{chunk}-{i}")
                    for i in range(50)
                ]
            )

    result = await accounts.ImportCustomers(requests(), metadata=tenant.metadata)
    assert result.imported == 200
    one = await accounts.GetCustomer(
        pb.GetCustomerRequest(id=result.customer_ids[123]), metadata=tenant.metadata
    )
    assert one.account_number == "IMP-2-23"
    assert one.devices[1].mac == "aa:bb:cc:00:11:22"


async def test_import_customers_names_the_repeat_when_account_numbers_collide(
    accounts: accounts_pb2_grpc.AccountServiceStub, tenant: TenantCtx
) -> None:
    async def requests() -> object:
        yield pb.ImportCustomersRequest(
            customers=[
                pb.Customer(name="a", account_number="X"),
                pb.Customer(name="b", account_number="X"),
            ]
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.ImportCustomers(requests(), metadata=tenant.metadata)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "customers[1].account_number" in (caught.value.details() or "")
