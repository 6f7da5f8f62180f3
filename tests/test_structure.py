"""The package's structure: no import circles, method names spelled in one place, modules of a
readable size, every reference to the theory document resolvable (the schema pages are generated
from the metrics module: ``tests/test_docs.py``)."""
import ast
import re
from pathlib import Path

import pytest

from ntk_bridge import methods

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ntk_bridge"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_circles():
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(path, name, known) for name, path in mods.items()}
    # a package's __init__ importing its own submodules is how re-exports work, not a circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".") and not name.startswith(t + ".")}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, cycles


def test_method_names_are_spelled_in_the_registry_only():
    """No list or tuple of two or more method names outside ``ntk_bridge/methods.py`` (and the
    few-shot package, whose methods are its own objects)."""
    names = "|".join(methods.METHODS)
    pattern = re.compile(rf"""[\(\[]\s*["']({names})["']\s*,\s*["']({names})["']""")
    stray = []
    for name, path in modules().items():
        if name in ("ntk_bridge.methods",) or name.startswith("ntk_bridge.fewshot"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "__all__" not in line:
                stray.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not stray, "\n".join(stray)


@pytest.mark.parametrize("limit", [400])
def test_no_module_is_too_long(limit):
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > limit}
    assert not long, long


def _sections() -> set[str]:
    """Section numbers of docs/theory.md: '1', '3', '3.2', ..."""
    out = set()
    for line in (ROOT / "docs" / "theory.md").read_text().splitlines():
        m = re.match(r"#+ (\d+(?:\.\d+)*)\.? ", line)
        if m:
            out.add(m.group(1))
    return out


def test_every_reference_to_the_theory_resolves():
    sections = _sections()
    assert {"1", "2", "3", "3.1", "3.2", "3.3", "3.4", "4", "5", "6"} <= sections
    missing = []
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "notebooks").glob("*.py"),
             ROOT / "README.md", *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "docs").glob("*.md")]
    for path in files:
        text = path.read_text()
        if path != Path(__file__).resolve():
            assert "THEORY" + ".md" not in text, f"{path}: cites a file that is not in the repository"
        for ref in re.findall(r"theory\.md`? §(\d+(?:\.\d+)*)", text):
            if ref not in sections:
                missing.append(f"{path.relative_to(ROOT)}: §{ref}")
    assert not missing, missing


def test_each_implementation_table_holds_exactly_the_methods_the_registry_flags():
    """The registry's flags against the tables the code runs: the closed forms, the finite trainers (each
    named after its method) and the few-shot objectives (whose registry adds R2D2 and ProtoNet)."""
    from ntk_bridge.closed_forms import CLOSED_FORMS
    from ntk_bridge.fewshot.methods import METHODS as FEWSHOT
    from ntk_bridge.finite.objectives import TRAINERS

    for kind, table in (("closed_form", CLOSED_FORMS), ("finite", TRAINERS), ("fewshot", FEWSHOT)):
        flagged = {m.name for m in methods.METHODS.values() if getattr(m, kind)}
        assert flagged == set(table) & set(methods.METHODS), kind
        assert all(isinstance(getattr(m, kind), bool) for m in methods.METHODS.values()), kind
    assert set(TRAINERS) == set(methods.METHODS) and all(t.name == n for n, t in TRAINERS.items())
    assert set(FEWSHOT) - set(methods.METHODS) == {"r2d2", "protonet"}
    assert {m.name for m in methods.METHODS.values() if m.fewshot} == {"mtl", "anil", "maml"}


# -- the layering rule (ntk_bridge.FLOORS; docs/architecture.md) ---------------------------------

def _graph() -> dict[str, set[str]]:
    """``{module: package modules it imports}``, a package's own submodules left out (re-exports)."""
    mods = modules()
    known = set(mods)
    return {name: {t for t in imports_of(path, name, known) if not t.startswith(name + ".")}
            for name, path in mods.items()}


def _upward(graph: dict[str, set[str]], module: str) -> list[str]:
    from ntk_bridge import FLOORS, floor_of

    here = floor_of(module)
    return [f"{module} ({FLOORS[here][0]}) imports {t} ({FLOORS[floor_of(t)][0]})"
            for t in sorted(graph[module]) if floor_of(t) > here]


def test_every_module_has_a_floor():
    from ntk_bridge import floor_of

    assert not [name for name in modules() if floor_of(name) is None]


def test_no_module_imports_from_a_floor_above_its_own():
    """Module-level imports and those inside functions alike (``config`` has its own test below)."""
    graph = _graph()
    upward = [line for name in sorted(graph) for line in _upward(graph, name)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module, wing", [("ntk_bridge.families", "ntk_bridge.fewshot"),
                                          ("ntk_bridge.config", "ntk_bridge.fewshot"),
                                          ("ntk_bridge.figures", "ntk_bridge.fewshot"),
                                          ("ntk_bridge.figures", "ntk_bridge.finite"),
                                          ("ntk_bridge.fewshot", "ntk_bridge.families"),
                                          ("ntk_bridge.fewshot", "ntk_bridge.finite"),
                                          ("ntk_bridge.finite", "ntk_bridge.fewshot")])
def test_a_wing_is_imported_only_from_above(module, wing):
    """``module`` (and its submodules) import nothing of ``wing``; the bridge between the wings is
    :mod:`ntk_bridge.bridge`, above both."""
    within = lambda name, top: name == top or name.startswith(top + ".")  # noqa: E731
    found = [f"{name} imports {t}" for name, targets in _graph().items() if within(name, module)
             for t in sorted(targets) if within(t, wing)]
    assert not found, found


def test_the_floor_of_a_module_is_its_longest_entry():
    from ntk_bridge import FLOORS, floor_of

    names = [n for n, _ in FLOORS]
    assert names[floor_of("ntk_bridge.fewshot.command")] == "commands"
    assert names[floor_of("ntk_bridge.fewshot.train")] == "wings"
    assert names[floor_of("ntk_bridge.datasets.render")] == "ground"
    assert floor_of("ntk_bridge.nowhere") is None and floor_of("ntk_bridge_other") is None


def test_the_test_head_values_are_spelled_in_at_most_three_modules():
    """The values of ``--test-head`` are constants of :mod:`ntk_bridge.settings`; a module that spells
    ``"learned"`` or ``"reset"`` as a string literal instead is counted here (docstrings and help texts,
    longer strings, do not count)."""
    from ntk_bridge.settings import TEST_HEADS

    spelling = sorted(str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
                      if any(isinstance(node, ast.Constant) and node.value in TEST_HEADS
                             for node in ast.walk(ast.parse(path.read_text()))))
    assert spelling == ["ntk_bridge/settings.py"], spelling


def _spells_mtl_data(tree: ast.AST, values: tuple[str, ...]) -> list[int]:
    """Lines where a module spells a value of ``--mtl-data`` as MTL's training set: compared with a
    name (``mtl_data == "all"``, ``data == "query"``), given to an ``mtl_data`` keyword or field,
    listed with the other value, or as a dictionary key."""
    def literal(node):
        return isinstance(node, ast.Constant) and node.value in values

    def names(node):
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(literal(s) or (isinstance(s, ast.Tuple) and any(map(literal, s.elts))) for s in sides) and \
                    any("data" in n for s in sides for n in names(s)):
                lines.append(node.lineno)
        elif isinstance(node, ast.keyword) and node.arg == "mtl_data" and any(map(literal, ast.walk(node.value))):
            lines.append(node.lineno)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "mtl_data" \
                and node.value is not None and any(map(literal, ast.walk(node.value))):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and \
                {e.value for e in node.elts if literal(e)} == set(values):
            lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and any(literal(k) for k in node.keys if k is not None):
            lines.append(node.lineno)
    return lines


def test_the_mtl_data_values_are_spelled_in_settings_only():
    """The values of ``--mtl-data`` are constants of :mod:`ntk_bridge.settings` (``ALL``, ``QUERY``);
    no module spells them. Docstrings and help texts do not count; nor does the task option ``query``."""
    from ntk_bridge.settings import MTL_DATA_VALUES

    spelling = {str(path.relative_to(ROOT)): _spells_mtl_data(ast.parse(path.read_text()), MTL_DATA_VALUES)
                for path in sorted(PACKAGE.rglob("*.py"))}
    spelling = {path: lines for path, lines in spelling.items() if lines}
    assert not spelling, spelling


def test_the_mtl_data_check_finds_what_it_looks_for():
    values = ("all", "query")
    for source in ('x = mtl_data == "all"', 'f(mtl_data=("query",))', 'm = ("all", "query")',
                   'd = {"query": 1}', 'y = "q" if data == "query" else 0', 'class C:\n    mtl_data: str = "all"'):
        assert _spells_mtl_data(ast.parse(source), values), source
    for source in ('n = ("support", "query")', 'x = dict(depths="all")', 'from m import ALL\nx = mtl_data == ALL'):
        assert not _spells_mtl_data(ast.parse(source), values), source


def test_the_tests_mirror_the_package():
    """One folder of tests per subpackage (``tests/finite/`` for ``ntk_bridge/finite/``, ...), the
    modules' tests beside them at the top; every test file's name is unique (pytest imports them by name)."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders == packages, (folders, packages)
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)

