"""Generate Python code for protos/specdec/v1 with grpc_tools.protoc: `make protos` or
`python -m specdec.tools.protogen [OUT_DIR]`.

The generated modules land in specdec/v1/ (package `specdec.v1`), mirroring the proto package, so the
generated imports (`from specdec.v1 import common_pb2`) resolve without path tricks. Never edit them by
hand: tests/unit/test_protos.py regenerates them and fails when the committed copies are stale.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository: protos/ and specdec/v1/ live under it
PROTO_DIR = ROOT / "protos"


def proto_files() -> list[pathlib.Path]:
    return sorted((PROTO_DIR / "specdec" / "v1").glob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *[str(p.relative_to(PROTO_DIR)) for p in proto_files()]]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    generate(out)
    print(f"generated {len(proto_files())} protos into {out / 'specdec' / 'v1'}")


if __name__ == "__main__":
    main()
