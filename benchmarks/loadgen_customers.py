"""Load generator: streams N customers over ImportCustomers in chunks; prints customers/s.

python benchmarks/loadgen_customers.py --target 127.0.0.1:50051 --key-file var/api-key -n 100000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from isp_rating.v1 import accounts_pb2 as pb
from isp_rating.v1 import accounts_pb2_grpc


def customers(count: int, prefix: str) -> list[pb.Customer]:
    """Realistic customers: address, installation, devices, addresses and stats filled in."""
    return [
        pb.Customer(
            account_number=f"{prefix}-{i:08d}",
            name=f"Customer {i}",
            email=f"c{i}@example.net",
            service_address=pb.ServiceAddress(
                lines=[f"{i % 300} High Street"],
                city="Leeds",
                postal_code="LS1 4DY",
                country_code="GB",
                location=pb.GeoPoint(latitude="53.799600", longitude="-1.549100"),
            ),
            installation=pb.Installation(
                status=pb.INSTALLATION_STATUS_COMPLETED, date="2026-03-01"
            ),
            connection_type=pb.CONNECTION_TYPE_FTTH,
            last_mile_technology=pb.LAST_MILE_TECHNOLOGY_GPON,
            plan_speed_down_mbps=500,
            plan_speed_up_mbps=75,
            devices=[
                pb.Device(
                    kind=pb.DEVICE_KIND_CPE,
                    serial=f"CPE{i:09d}",
                    mac="02:00:" + ":".join(f"{(i >> s) & 255:02x}" for s in (24, 16, 8, 0)),
                )
            ],
            static_ipv4=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        )
        for i in range(count)
    ]


async def import_customers(
    target: str, key: str, batch: list[pb.Customer], chunk: int = 2000
) -> tuple[int, float]:
    """Streams the batch; returns (imported, seconds)."""

    async def requests() -> AsyncIterator[pb.ImportCustomersRequest]:
        for start in range(0, len(batch), chunk):
            yield pb.ImportCustomersRequest(customers=batch[start : start + chunk])

    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = accounts_pb2_grpc.AccountServiceStub(channel)
        started = time.perf_counter()
        reply = await stub.ImportCustomers(
            requests(), metadata=(("authorization", f"Bearer {key}"),)
        )
        return reply.imported, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--key-file", default="var/api-key")
    parser.add_argument("-n", type=int, default=100_000)
    args = parser.parse_args()
    batch = customers(args.n, f"L{int(time.time())}")
    imported, seconds = asyncio.run(
        import_customers(args.target, Path(args.key_file).read_text().strip(), batch)
    )
    print(
        f"imported {imported} customers in {seconds:.2f} s: {imported / seconds:,.0f}/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
