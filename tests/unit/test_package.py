"""The wheel holds what an installed specdec needs: every layer's modules, the type stubs of the generated
protobuf code, and the built-in tiny pair (so `make demo` runs from an install without a checkout)."""

import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_stubs_the_tiny_pair_and_every_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("specdec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    stubs = {f"specdec/v1/{p}_pb2.pyi" for p in ("common", "draft", "target", "orchestrator")}
    tiny = {f"specdec/assets/tiny/{role}/{f}" for role in ("target", "draft")
            for f in ("config.json", "model.safetensors", "tokenizer.json")}
    packages = {f"{p}/__init__.py" for p in ("specdec/core", "specdec/proposers", "specdec/serving", "specdec/cli",
                                             "specdec/tools", "draft_service", "target_service", "orchestrator")}
    assert stubs | tiny | packages | {"specdec/__main__.py"} <= names, sorted((stubs | tiny | packages) - names)
    assert not [n for n in names if n.startswith("tests/")]
