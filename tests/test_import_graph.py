"""The package layering, read from the source with `ast` (nothing is imported): which part of `ltx2trainer` may
import which, no cycles between them, and the rules docs/architecture.md states.

A node is a subpackage of `ltx2trainer` (`api`, `jobs`, …) or one of its top-level modules (`schemas`,
`wiring`, …). Every import counts, at module level and inside functions (a lazy import is still a
dependency, and a lazy cycle is still a cycle), and so does an import under `if TYPE_CHECKING:`. A new
subpackage or top-level module must be given its row in `MAY_IMPORT`: docs/architecture.md has the same table.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ltx2trainer"

# The bottom: modules every layer may use (the contract, settings, errors, and helpers of no weight).
CORE = {"errors", "hashing", "settings", "uploads", "schemas", "server_paths"}
# ...and, for what talks to the outside world (downloads, webhooks, the gateway), the SSRF guard.
BASE = CORE | {"netguard", "guarded_http"}

# Who may import whom (directly; a module's own package is always allowed). The layers, bottom up:
# core → model → training → pipeline (with planning and storage);  core → jobs → notify, billing → wiring →
# api, worker → the command line. Listed here is what a node may use, not what it must.
MAY_IMPORT: dict[str, set[str]] = {
    PACKAGE: {"import_noise"},  # ltx2trainer/__init__.py
    "import_noise": set(),
    "errors": set(),
    "hashing": set(),
    "settings": set(),
    "uploads": {"errors"},
    "schemas": {"errors", "uploads"},
    "server_paths": {"errors", "settings"},
    "netguard": {"errors"},
    "guarded_http": {"errors", "netguard"},
    "sample_data": CORE,
    "client": CORE,  # the Python client of the API: the contract's types, nothing of the service
    "supervise": CORE,
    "storage": CORE,
    # torch lives in model/, training/ and pipeline/ only; jobs/ reads a model's identity (model/identity.py,
    # torch-free) for /health and the workers table.
    "model": CORE,
    "training": CORE | {"model"},
    "planning": CORE | {"model"},
    "pipeline": BASE | {"model", "planning", "training", "storage"},
    "jobs": CORE | {"model"},
    "fal_protocol": CORE | {"jobs"},  # the hosted queue protocol's shapes, for api/ and notify/
    "notify": BASE | {"fal_protocol", "jobs", "storage"},
    "billing": CORE | {"jobs"},
    "wiring": CORE | {"billing", "jobs", "notify", "storage"},
    "api": BASE | {"billing", "fal_protocol", "jobs", "planning", "storage", "wiring"},
    "worker": BASE | {"billing", "jobs", "model", "notify", "pipeline", "storage", "wiring"},
    "cli_common": CORE,
    "cli_plan": CORE | {"cli_common", "planning"},
    "cli_training": BASE | {"cli_common", "model", "pipeline", "planning"},
    "cli_service": BASE | {"api", "billing", "cli_common", "client", "jobs", "supervise", "wiring", "worker"},
    "demo": CORE | {"cli_common", "cli_service", "client", "jobs", "wiring"},
    "cli": BASE | {"cli_common", "cli_plan", "cli_service", "cli_training", "demo", "pipeline", "sample_data"},
}

TORCH = ("torch", "torchvision", "torchaudio", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes",
         "torchao", "safetensors.torch")

# What a node may never import: neither itself (at any level) nor through any module it imports at module
# level, however indirectly. (The gateway runs in an image without torch: Dockerfile, target `gateway`.)
NEVER: dict[str, tuple[str, ...]] = {
    "api": (*TORCH, "ltx2trainer.training", "ltx2trainer.pipeline"),
    "pipeline": ("ltx2trainer.api", "ltx2trainer.worker", "celery"),
    "jobs": ("ltx2trainer.worker",),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (or package), as absolute a name as can be told
    where: str  # file:line
    at_module_level: bool  # runs when the importing module is imported (not in a function, not TYPE_CHECKING)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by name (a package by the name of its `__init__`)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def node_of(module: str) -> str | None:
    """`ltx2trainer.api.app` → `api`; `ltx2trainer.wiring` → `wiring`; not ours → None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else PACKAGE


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, at_module_level: bool):
    """(import statement, runs at import time) for every import under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, at_module_level
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), False)
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), at_module_level)
        else:
            yield from _walk(child, at_module_level)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = modules()[module]
    is_package = path.name == "__init__.py"
    where = path.relative_to(ROOT)
    found = []
    for statement, at_module_level in _walk(ast.parse(path.read_text(encoding="utf-8")), True):
        if isinstance(statement, ast.Import):
            targets = [alias.name for alias in statement.names]
        else:
            base = statement.module or ""
            if statement.level:  # relative: from the package of this module, `level - 1` packages up
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (statement.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            # `from a import b` imports the module a.b when there is one, else the name b from a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base
                       for alias in statement.names]
        found += [Import(module, target, f"{where}:{statement.lineno}", at_module_level) for target in targets]
    return tuple(dict.fromkeys(found))  # `from a import b, c`: one import of a, told once


def all_imports() -> list[Import]:
    return [imp for module in modules() for imp in imports_of(module)]


def edges() -> dict[tuple[str, str], list[Import]]:
    """(importing node, imported node) → the imports that make the edge."""
    found: dict[tuple[str, str], list[Import]] = {}
    for imp in all_imports():
        source, target = node_of(imp.source), node_of(imp.target)
        if target is not None and target != source and target != PACKAGE:  # ltx2trainer/__init__ runs anyway
            found.setdefault((source, target), []).append(imp)
    return found


def loaded_with(module: str) -> list[str]:
    """What importing `module` runs, itself included: the packages above it, then their `__init__`s."""
    parts = module.split(".")
    return [name for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if name in modules()]


def runtime_chain(start: str, forbidden: tuple[str, ...]) -> list[Import] | None:
    """The chain of module-level imports by which importing `start` imports something in `forbidden`."""
    def hit(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    seen = {start}
    queue: deque[tuple[str, list[Import]]] = deque([(start, [])])
    while queue:
        module, chain = queue.popleft()
        for imp in imports_of(module):
            if not imp.at_module_level:
                continue
            if hit(imp.target):
                return [*chain, imp]
            for loaded in loaded_with(imp.target):
                if hit(loaded):
                    return [*chain, imp]
                if loaded not in seen:
                    seen.add(loaded)
                    queue.append((loaded, [*chain, imp]))
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, …, a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe(imp: Import) -> str:
    return f"{imp.where} ({imp.source} imports {imp.target}{'' if imp.at_module_level else ', lazily'})"


# --- the tests ---------------------------------------------------------------------------------------------

def test_the_scan_sees_the_whole_package():
    nodes = {node_of(module) for module in modules()}
    assert {"api", "jobs", "worker", "pipeline", "training", "model", "planning", "notify", "billing",
            "storage", "schemas", "wiring"} <= nodes
    assert len(all_imports()) > 300
    unplaced = sorted(nodes - MAY_IMPORT.keys())
    assert not unplaced, f"give these a row in MAY_IMPORT (and in docs/architecture.md): {unplaced}"


def test_the_allowed_table_is_itself_layered():
    unknown = {target for targets in MAY_IMPORT.values() for target in targets} - MAY_IMPORT.keys()
    assert not unknown, f"MAY_IMPORT names nodes that do not exist: {sorted(unknown)}"
    assert find_cycle(MAY_IMPORT) is None, f"MAY_IMPORT allows a cycle: {' → '.join(find_cycle(MAY_IMPORT))}"


def test_every_import_between_packages_is_allowed():
    refused = [f"{describe(imp)}: {source} may not import {target} (it may import: "
               f"{', '.join(sorted(MAY_IMPORT.get(source, ()))) or 'nothing of ltx2trainer'})"
               for (source, target), imps in sorted(edges().items())
               if target not in MAY_IMPORT.get(source, set()) for imp in imps]
    assert not refused, "imports that break the layering (docs/architecture.md):\n" + "\n".join(refused)


def test_there_are_no_cycles_between_packages():
    found = edges()
    graph: dict[str, set[str]] = {}
    for source, target in found:
        graph.setdefault(source, set()).add(target)
    cycle = find_cycle(graph)
    assert cycle is None, "a cycle between packages:\n" + "\n".join(
        f"{a} → {b}: {describe(found[(a, b)][0])}" for a, b in zip(cycle, cycle[1:], strict=False))


def test_forbidden_imports_are_neither_direct_nor_indirect():
    problems = []
    for node, forbidden in NEVER.items():
        own = sorted(module for module in modules() if node_of(module) == node)
        assert own, node
        chains: dict[str, list[Import]] = {}  # the offending import → the shortest chain that reaches it
        for module in own:
            for imp in imports_of(module):  # directly, at any level
                if any(imp.target == f or imp.target.startswith(f + ".") for f in forbidden):
                    problems.append(f"{node} may never import {imp.target}: {describe(imp)}")
            chain = runtime_chain(module, forbidden)  # through what it imports at module level
            if chain is not None and len(chain) > 1:
                best = chains.get(chain[-1].where)
                if best is None or len(chain) < len(best):
                    chains[chain[-1].where] = chain
        problems += [f"importing {chain[0].source} imports {chain[-1].target}, which {node} may never import, "
                     "through:\n    " + "\n    ".join(describe(imp) for imp in chain) for chain in chains.values()]
    assert not problems, "\n".join(problems)


def test_the_rules_are_checked_for_real():
    """The checks above find what they look for: a chain through module-level imports, and a cycle."""
    chain = runtime_chain("ltx2trainer.pipeline.train", ("torch",))
    assert chain is not None and chain[-1].target == "torch"
    assert runtime_chain("ltx2trainer.api.app", ("fastapi",)) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
