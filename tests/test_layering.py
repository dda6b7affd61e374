"""The import rules of DESIGN.md §3, enforced by walking every module's AST.

A lower layer that imports a higher one (the core importing trio, storage
importing workers) breaks the design: the core must stay pure so the simulator
can drive it deterministically, and storage must stay blocking and trio-free.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STDLIB = set(sys.stdlib_module_names)
# The core may use the stdlib, but nothing that does I/O, reads clocks or keeps
# global randomness. `random` is allowed for the random.Random type only.
CORE_FORBIDDEN_STDLIB = {
    "os", "time", "socket", "threading", "asyncio", "subprocess", "select",
    "selectors", "multiprocessing", "io", "pathlib", "shutil", "tempfile",
    "signal", "datetime",
}

# module prefix -> allowed top-level imports beyond the stdlib
RULES: list[tuple[str, set[str]]] = [
    ("multiraft.raft", {"attrs", "multiraft.raft"}),
    ("multiraft.statemachine", set()),
    # replica ids (a naming rule): stdlib only, shared by every layer above the core
    ("multiraft.replica", set()),
    ("multiraft.kv", {"attrs", "multiraft.raft", "multiraft.statemachine"}),
    ("multiraft.sharding", {"attrs", "multiraft.raft"}),
    ("multiraft.placement", {"attrs", "multiraft.raft", "multiraft.sharding", "multiraft.replica"}),
    ("multiraft.lincheck", {"attrs"}),
    # RESP2 parsing and serialization: pure, no I/O (the rest of
    # multiraft.resp composes the client, like the CLIs)
    ("multiraft.resp.protocol", {"attrs"}),
    ("multiraft.wire", {"attrs", "cbor2", "multiraft.raft", "multiraft.kv", "multiraft.wire"}),
    (
        "multiraft.sim",
        {"attrs", "multiraft.raft", "multiraft.kv", "multiraft.statemachine", "multiraft.sharding",
         "multiraft.wire", "multiraft.lincheck", "multiraft.sim", "multiraft.replica", "storage",
         # the client protocol's decoder (pure), fed hostile frames
         "multiraft.protocol"},
    ),
    ("storage", {"attrs", "multiraft.raft", "storage"}),
    ("multiraft.transport", {"attrs", "trio", "pynng", "multiraft.wire", "multiraft.raft", "multiraft.transport"}),
    (
        "workers",
        {"attrs", "trio", "trio_util", "multiraft.raft", "multiraft.kv", "multiraft.statemachine",
         "multiraft.sharding", "multiraft.wire", "multiraft.protocol", "multiraft.transport",
         "multiraft.replica", "storage", "workers"},
    ),
]

# Other processes' code: the control plane talks to workers over pipes and
# sockets, never by importing them (DESIGN.md §1, §3).
PRIVATE_TO = {"workers": ("workers",), "storage": ("storage", "workers", "multiraft.sim")}
FORBIDDEN_ANYWHERE_BELOW_WORKERS = {"workers"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Imported module names. `from pkg import mod` counts as `pkg.mod`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if target else alias.name)
    return found


def _allowed(imported: str, allowed: set[str]) -> bool:
    return any(imported == a or imported.startswith(a + ".") for a in allowed)


def _modules():
    for top in ("multiraft", "storage", "workers"):
        yield from sorted((ROOT / top).rglob("*.py"))


def _rule_for(mod: str):
    best = None
    for prefix, allowed in RULES:
        if mod == prefix or mod.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, allowed)
    return best


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_what_its_layer_allows(path: Path) -> None:
    mod = _module_name(path)
    rule = _rule_for(mod)
    if rule is None:
        return  # CLIs, coordinator, client: they compose the layers
    prefix, allowed = rule
    bad = []
    for imported in _imports(path):
        top = imported.split(".")[0]
        if top in STDLIB:
            if prefix == "multiraft.raft" and top in CORE_FORBIDDEN_STDLIB:
                bad.append(imported)
            continue
        if not _allowed(imported, allowed):
            bad.append(imported)
    assert not bad, f"{mod} ({prefix} layer) imports {sorted(bad)}; allowed: {sorted(allowed)}"


def test_core_never_uses_global_random_state() -> None:
    # random.Random instances are passed in; module-level random.random() etc.
    # would make the simulator irreproducible.
    for path in sorted((ROOT / "multiraft" / "raft").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "random" and node.attr != "Random":
                    pytest.fail(f"{path.name} uses random.{node.attr}")


def test_core_has_no_async_functions() -> None:
    for path in sorted((ROOT / "multiraft" / "raft").rglob("*.py")):
        tree = ast.parse(path.read_text())
        asyncs = [n.name for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)]
        assert not asyncs, f"{path.name}: {asyncs}"


def test_top_level_packages_resolve_to_this_checkout() -> None:
    import multiraft
    import storage
    import workers

    for mod in (multiraft, storage, workers):
        assert Path(mod.__file__).resolve().is_relative_to(ROOT), mod.__file__


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_worker_and_storage_code_is_imported_only_inside_their_process(path: Path) -> None:
    mod = _module_name(path)
    for imported in _imports(path):
        top = imported.split(".")[0]
        owners = PRIVATE_TO.get(top)
        if owners is None:
            continue
        assert any(mod == o or mod.startswith(o + ".") for o in owners), (
            f"{mod} imports {imported}: only {owners} may"
        )
