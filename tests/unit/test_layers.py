"""The tree's layers, read from the code: imports only go down (design.md §1).

    core  <  proposers  <  serving (and the generated v1)  <  the three services  <  tools  <  cli
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = ("draft_service", "target_service", "orchestrator")
RANK = {"specdec.core": 0, "specdec.proposers": 1, "specdec.v1": 2, "specdec.serving": 2,
        **{s: 3 for s in SERVICES}, "specdec.tools": 4, "specdec.cli": 5, "specdec.__main__": 5}
NETWORK = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "specdec.v1")


def layer_of(module: str) -> str | None:
    for prefix in sorted(RANK, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def imports_of(path: pathlib.Path) -> list[str]:
    """Every module the file imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]  # `from specdec import x`
    return found


def modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for top in ("specdec", *SERVICES):
        for path in (ROOT / top).rglob("*.py"):
            if "v1" in path.relative_to(ROOT).parts:
                continue  # generated
            out.append((".".join(path.relative_to(ROOT).with_suffix("").parts), path))
    return out


def test_every_module_belongs_to_a_layer():
    loose = [name for name, _ in modules() if layer_of(name) is None and name != "specdec.__init__"]
    assert not loose, f"modules outside the layers of design.md §1: {loose}"


def test_imports_only_go_down():
    upward = []
    for name, path in modules():
        mine = layer_of(name)
        if mine is None:
            continue
        for imported in imports_of(path):
            theirs = layer_of(imported)
            if theirs is None or theirs == mine:
                continue
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] == 3):  # services never import each other
                upward.append(f"{name} imports {imported}")
    assert not upward, "imports that go up (or across services):\n" + "\n".join(sorted(set(upward)))


def test_decoding_and_proposers_never_touch_the_network():
    offenders = [f"{name} imports {imported}" for name, path in modules()
                 if layer_of(name) in ("specdec.core", "specdec.proposers")
                 for imported in imports_of(path) if imported.startswith(NETWORK)]
    assert not offenders, offenders


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: a core module importing the serving layer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from specdec.serving.convert import ms\nimport grpc\n")
    assert imports_of(bad) == ["specdec.serving.convert", "specdec.serving.convert.ms", "grpc"]
    assert RANK[layer_of("specdec.serving.convert")] > RANK[layer_of("specdec.core.verify")]


def imported_closure(module: str) -> set[str]:
    """Every module of this tree that importing `module` imports, directly or not."""
    paths = dict(modules())
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in paths:
            continue
        seen.add(name)
        todo += imports_of(paths[name])
    return seen


def test_the_orchestrator_does_not_import_the_engine():
    """The front door runs no model: the engine would bring transformers' model code, seconds at every start."""
    found = imported_closure("orchestrator.server")
    assert "orchestrator.service" in found and "specdec.serving.telemetry" in found  # the walk follows imports
    assert "specdec.core.batching" not in found and "specdec.core.runner" not in found
