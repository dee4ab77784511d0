"""The ISP usage-rating service: grpc.aio servers over SQLAlchemy, with a Rust core."""
