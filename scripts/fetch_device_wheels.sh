#!/usr/bin/env bash
# The wheels a device call carries (`carry: [".whl"]`; scripts/gpu_run.sh installs them into /tmp/site): what the
# GPU image (Python 3.12, torch, transformers, grpcio 1.84, protobuf) lacks of specdec's dependencies, and py-spy for
# gpu_run's profiling part. Run in the repository root where pip can reach an index; .whl/ stays out of git.
set -euo pipefail
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 \
         manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  grpcio-health-checking==1.84.0 grpcio-reflection==1.84.0 \
  opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions \
  opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-common \
  opentelemetry-instrumentation opentelemetry-instrumentation-grpc googleapis-common-protos wrapt tqdm py-spy
ls .whl
