"""The architecture of docs/architecture.md, checked: every import of every module (those inside
functions too) points to its own layer or a lower one, no generation package imports another, no
import cycle (through imports inside functions too: hiding one there does not remove it), no
source file over the size a reader can hold."""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "dreamlab"
MAX_LINES = 520

# (layer, module prefixes): a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (1, ("dreamlab", "dreamlab.io", "dreamlab.progress", "dreamlab.viz")),
    (2, ("dreamlab.envs",)),
    (3, ("dreamlab.data",)),
    (4, ("dreamlab.models",)),
    (5, ("dreamlab.checkpoint", "dreamlab.rundir")),
    (6, ("dreamlab.worldmodel", "dreamlab.dream", "dreamlab.agent")),
    (7, ("dreamlab.train", "dreamlab.plan", "dreamlab.eval")),
    (8, ("dreamlab.generations", "dreamlab.generations.args")),
    (
        9,
        (
            "dreamlab.generations.vmc",
            "dreamlab.generations.rssm",
            "dreamlab.generations.diffusion",
            "dreamlab.generations.tokens",
        ),
    ),
    (
        10,
        (
            "dreamlab.compare_models",
            "dreamlab.bc",
            "dreamlab.play",
            "dreamlab.commands",
            "dreamlab.api",
            "dreamlab.futures_command",
        ),
    ),
    (11, ("dreamlab.cli",)),
]
GENERATIONS = LAYERS[8][1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> tuple[int, str]:
    """``(layer, prefix)`` of the longest prefix of ``module`` named in :data:`LAYERS`."""
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    assert best is not None, f"{module} is in no layer of this test (add it to LAYERS and docs)"
    return best


def imports(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every dreamlab import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: list[tuple[int, str]] = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "dreamlab":
                for alias in node.names:  # `from dreamlab.x import y` may import module x.y
                    sub = f"{node.module}.{alias.name}"
                    is_module = (SRC / (sub.replace(".", "/") + ".py")).exists() or (
                        SRC / sub.replace(".", "/") / "__init__.py"
                    ).exists()
                    found.append((node.lineno, sub if is_module else node.module))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dreamlab":
                    found.append((node.lineno, alias.name))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_import_points_down_or_sideways() -> None:
    upward: list[str] = []
    for path in SOURCES:
        mine = module_name(path)
        layer, prefix = layer_of(mine)
        for line, target in imports(path):
            their_layer, their_prefix = layer_of(target)
            rel = path.relative_to(SRC)
            if their_layer > layer:
                upward.append(f"{rel}:{line} {mine} (layer {layer}) -> {target} ({their_layer})")
            elif layer == 9 and their_layer == 9 and their_prefix != prefix:
                upward.append(f"{rel}:{line} generation {prefix} imports {their_prefix}")
    assert not upward, "imports against docs/architecture.md:\n" + "\n".join(dict.fromkeys(upward))


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    names = {module_name(p) for p in SOURCES}
    for path in SOURCES:
        for _, target in imports(path):
            while target not in names and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module_name(path):
                graph[module_name(path)].add(target)
    # a cycle is a back edge in a depth-first search
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(names):
        if node not in state:
            visit(node, [node])
    # a package importing its own submodules at the top (re-exports) is not a cycle of ideas
    real = [c for c in cycles if not all(m.startswith(c.split(" -> ")[0]) for m in c.split(" -> "))]
    assert not real, "import cycles:\n" + "\n".join(real)


def test_no_source_file_too_long() -> None:
    long = [
        f"{p.relative_to(SRC)}: {n} lines"
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"files over {MAX_LINES} lines (split them by idea):\n" + "\n".join(long)


@pytest.mark.parametrize("kind", ["vmc", "rssm", "diffusion", "tokens"])
def test_each_generation_registers_itself_and_imports_on_its_own(kind: str) -> None:
    from dreamlab.generations import KINDS, get

    generation = get(kind)
    assert generation.kind == kind and KINDS[kind].endswith(kind)
    assert generation.presets, f"{kind} has no preset"
    package = importlib.import_module(KINDS[kind])
    assert package.GENERATION is generation


def test_presets_belong_to_exactly_one_generation() -> None:
    from dreamlab.generations import all_generations, for_preset

    seen: dict[str, str] = {}
    for generation in all_generations():
        for name in generation.presets:
            assert name not in seen, f"preset {name} in {seen.get(name)} and {generation.kind}"
            seen[name] = generation.kind
            assert for_preset(name) is generation
