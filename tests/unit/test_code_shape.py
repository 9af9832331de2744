"""The code's shape, read from the source by parsing (nothing is imported):
- the import graph of runtime/ and launcher/ has no cycle, between modules or between packages;
- launcher/ never imports torch, and imports from gemma3_runtime only torch-free config modules;
- no module over 400 lines and no function over 80 (launcher/: an explicit allowlist of today's exceptions);
- no environment variable read in runtime/ selects a kernel or a switch (typed config fields do that).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"gemma3_runtime": REPO / "runtime", "gemma3_launch": REPO / "launcher"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


#: environment variables the runtime may read: process placement (torchrun), credentials and locations; none of
#: them chooses a kernel or a speed switch
RUNTIME_ENV_READS = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "HF_TOKEN",
    "HF_HOME",
    "WANDB_API_KEY",
    "SAVE_DIR",
    "GEMMA3_LAUNCH_CACHE",  # where bundled assets are cached
    "TRITON_INTERPRET",  # Triton's own CPU interpreter (the tests' way to run the kernels without a GPU)
    "GEMMA3_RESULT_FILE",  # where the job wrapper wants the step's result.json
    # W&B's own settings (training/wandb_run.py): where and whether metrics go, never what runs
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_MODE",
    "WANDB_BASE_URL",
    "WANDB_DISABLED",
}


def _contract_names() -> dict[str, str]:
    """String constants of gemma3_launch.contract, so `os.environ.get(RESULT_FILE_ENV)` is read as its value."""
    tree = ast.parse((REPO / "launcher" / "gemma3_launch" / "contract.py").read_text())
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


CONTRACT_NAMES = _contract_names()
#: modules the launcher may import from the runtime: the torch-free configs it validates specs with
LAUNCHER_MAY_IMPORT = {
    "gemma3_runtime",
    "gemma3_runtime.errors",
    "gemma3_runtime.training",
    "gemma3_runtime.training.config",
    "gemma3_runtime.training.recipes",
    "gemma3_runtime.training.run_args",  # the launcher validates a plan's `run` argv with it (runtime_config.py)
    "gemma3_runtime.perf",
    "gemma3_runtime.perf.config",
    "gemma3_runtime.peft",
    "gemma3_runtime.peft.config",
    "gemma3_runtime.model",
    "gemma3_runtime.model.config",
    "gemma3_runtime._lazy",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name: str, top_level_only: bool = False) -> set[str]:
    """Every module `name` imports (absolute names; `from pkg import mod` resolves to the submodule)."""
    tree, is_package = TREES[name], MODULES[name].name == "__init__.py"
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return found


def _internal_graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    """A module's package for the package-level graph: its first two name parts (a top-level module is its own)."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_internal_graph()) == []


def test_no_import_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in _internal_graph().items():
        packages[_package(module)].update(_package(t) for t in targets if _package(t) != _package(module))
    assert _cycles(packages) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_launcher_never_imports_torch_and_only_runtime_configs() -> None:
    for name in (m for m in MODULES if m.startswith("gemma3_launch")):
        imported = _imports(name)
        assert not {m for m in imported if m.split(".")[0] in ("torch", "megatron")}, name
        runtime = {m for m in imported if m.split(".")[0] == "gemma3_runtime"}
        assert runtime <= LAUNCHER_MAY_IMPORT, (name, sorted(runtime - LAUNCHER_MAY_IMPORT))


def test_the_runtime_configs_the_launcher_may_import_are_torch_free() -> None:
    """What importing them executes (their module-level imports, transitively) never reaches torch."""
    seen: set[str] = set()
    todo = [m for m in LAUNCHER_MAY_IMPORT if m in MODULES]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imports(name, top_level_only=True):
            assert imported.split(".")[0] not in ("torch", "megatron", "transformers"), (name, imported)
            parts = imported.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES)


def _over_limit_functions(name: str) -> list[str]:
    return [
        f"{name}:{node.name}"
        for node in ast.walk(TREES[name])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_modules_and_functions_stay_small() -> None:
    """No exceptions: every module of both packages under 400 lines, every function under 80."""
    long_modules = [
        f"{name} ({len(path.read_text().splitlines())} lines)"
        for name, path in MODULES.items()
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES
    ]
    long_functions = [f for name in MODULES for f in _over_limit_functions(name)]
    assert long_modules == [] and long_functions == []


def _env_reads(tree: ast.AST) -> list[str | None]:
    """Names read from the environment (None for a name that is not a string literal)."""

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def literal(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and node.id in CONTRACT_NAMES:  # a shared constant (gemma3_launch.contract)
            return CONTRACT_NAMES[node.id]
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    reads: list[str | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if (func.attr in ("get", "pop", "setdefault") and is_environ(func.value)) or func.attr == "getenv":
                reads.append(literal(node.args[0]) if node.args else None)
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            reads.append(literal(node.slice))
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            reads.append(literal(node.left))
    return reads


def test_no_environment_variable_selects_a_kernel_or_switch() -> None:
    unexpected = {
        (name, read)
        for name in MODULES
        if name.startswith("gemma3_runtime")
        for read in _env_reads(TREES[name])
        if read not in RUNTIME_ENV_READS
    }
    assert unexpected == set()


def test_the_env_read_finder_sees_every_form() -> None:
    source = 'import os\nos.environ.get("A")\nos.environ["B"]\nos.getenv("C")\n"D" in os.environ\nos.environ.get(k)\n'
    assert _env_reads(ast.parse(source)) == ["A", "B", "C", "D", None]
