#!/usr/bin/env bash
# Regenerates the committed Python stubs of proto/ into OUT (default: the repo root).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out/isp_rating/v1"
"$py" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/isp_rating/v1/*.proto
printf '"""Generated protobuf and gRPC stubs of package isp_rating.v1 (make proto)."""\n' \
  >"$out/isp_rating/v1/__init__.py"
printf '"""Generated API of the ISP usage-rating service."""\n' >"$out/isp_rating/__init__.py"
touch "$out/isp_rating/py.typed"
