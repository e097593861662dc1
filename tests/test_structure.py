"""The code's layers: no module of serving/, deploy/ or benchmarks/ imports another that imports it back, directly or
through others (imports inside functions count too). Read from the source with ast; nothing is imported."""
import ast
import os

from conftest import ROOT

PACKAGES = ("serving", "deploy", "benchmarks")


def modules():
    """{dotted name: path} of every module under PACKAGES."""
    found = {}
    for top in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    found[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return found


def imports(name, path, known):
    """The known modules that `name` imports."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            # benchmarks/ modules import their siblings by bare name (sys.path holds their folder)
            for candidate in (target, f"{package}.{target}"):
                if candidate in known and candidate != name:
                    out.add(candidate)
    return out


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph["serving.app"] and graph["benchmarks.bench"], "the walk finds imports"
    assert cycles(graph) == [], [" -> ".join(c) for c in cycles(graph)]


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
