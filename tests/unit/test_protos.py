"""The generated code in specdec/v1 is what protoc makes from protos/ today."""

import filecmp
import pathlib

from specdec.tools import protogen


def test_generated_code_is_fresh(tmp_path: pathlib.Path):
    protogen.generate(tmp_path)
    fresh = tmp_path / "specdec" / "v1"
    committed = protogen.ROOT / "specdec" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names, "protoc produced nothing"
    stale = [n for n in names if not (committed / n).exists() or not filecmp.cmp(fresh / n, committed / n, shallow=False)]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_protos_follow_conventions():
    for proto in protogen.proto_files():
        text = proto.read_text()
        assert "package specdec.v1;" in text
        lines = text.splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = (stripped.endswith(";") and "=" in stripped and not stripped.startswith(("//", "option"))
                        and not stripped.startswith("syntax"))
            if is_field:  # every field and enum value has a comment on the line(s) above
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} lacks a comment: {stripped}"
        for enum_block in text.split("enum ")[1:]:
            assert "_UNSPECIFIED = 0;" in enum_block.split("}")[0], f"{proto.name}: enum without _UNSPECIFIED = 0"
