#!/usr/bin/env bash
# The wheels a device call carries (`carry: [".whl"]`; scripts/gpu_run.sh installs them into /tmp/site): what the
# GPU image (Python 3.12, torch, transformers, grpcio 1.84, protobuf) lacks of specdec's dependencies, and py-spy for
# gpu_run's profiling part. Run in the repository root where pip can reach an index; .whl/ stays out of git.
# OpenTelemetry's packages are pinned to one release: fetched unpinned, a patch of the api alone (1.45.3 beside the
# sdk's 1.45.2) made the device's install refuse the whole set. The directory is emptied first for the same reason.
set -euo pipefail
OTEL=${OTEL:-1.45.2} OTEL_CONTRIB=${OTEL_CONTRIB:-0.66b2}
rm -rf .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 \
         manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  grpcio-health-checking==1.84.0 grpcio-reflection==1.84.0 \
  opentelemetry-api==$OTEL opentelemetry-sdk==$OTEL opentelemetry-proto==$OTEL opentelemetry-exporter-otlp-proto-grpc==$OTEL \
  opentelemetry-exporter-otlp-proto-common==$OTEL opentelemetry-semantic-conventions==$OTEL_CONTRIB \
  opentelemetry-exporter-otlp-common==$OTEL_CONTRIB opentelemetry-instrumentation==$OTEL_CONTRIB \
  opentelemetry-instrumentation-grpc==$OTEL_CONTRIB googleapis-common-protos wrapt tqdm py-spy
ls .whl
