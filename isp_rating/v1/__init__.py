"""Generated protobuf and gRPC stubs of package isp_rating.v1 (make proto)."""
