"""The code's shape, read from the source with ast (nothing is imported):
- its layers: no module of serving/, deploy/ or benchmarks/ imports another that imports it back, directly or
  through others (imports inside functions count too), and the lower layers never reach the upper ones (LAYERS);
- its rooms: no class longer than 250 lines and no function longer than 60, in serving/ and deploy/. A unit that
  must be longer says why in a comment on its first line that starts with "# longer:"."""
import ast
import os
import re

from conftest import ROOT

PACKAGES = ("serving", "deploy", "benchmarks")
LIMITS = (("serving", "deploy"), {ast.ClassDef: 250, ast.FunctionDef: 60, ast.AsyncFunctionDef: 60})


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


# What a lower layer may never reach, directly or through others. Triton's client and the on-demand loader know no
# HTTP route, handler or config.json; the gRPC wire layer knows nothing of Triton's meaning either.
HTTP = ("serving.app", "serving.front", "serving.handlers", "serving.http", "serving.service", "serving.binding",
        "serving.probe", "serving.modelarts", "serving.openapi", "serving.worker")
LAYERS = {
    "serving.triton": HTTP,
    "serving.loading": HTTP,
    "serving.grpc_wire": HTTP + ("serving.triton", "serving.loading", "serving.repository"),
    "serving.handlers": ("serving.app", "serving.front", "serving.service", "serving.triton", "serving.loading"),
}


def reach(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_lower_layers_never_reach_the_upper_ones():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    broken = []
    for layer, banned in LAYERS.items():
        members = [n for n in known if n == layer or n.startswith(layer + ".")]
        assert members, layer
        for name in members:
            broken += [f"{name} reaches {r}" for r in sorted(reach(graph, name))
                       if any(r == b or r.startswith(b + ".") for b in banned)]
    assert broken == []


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def units(known):
    """[(lines, limit, "module.Unit", excused)] of every class and function in the limited packages."""
    packages, limits = LIMITS
    found = []
    for name, path in known.items():
        if name.split(".")[0] not in packages:
            continue
        source = open(path).read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, path)):
            if type(node) in limits:
                excused = "# longer:" in lines[node.lineno - 1]
                found.append((node.end_lineno - node.lineno + 1, limits[type(node)], f"{name}.{node.name}", excused))
    return sorted(found, reverse=True)


def test_no_class_over_250_lines_and_no_function_over_60():
    found = units(modules())
    longest = {kind: next(f"{unit} ({size} lines)" for size, limit, unit, _ in found if limit == lim)
               for kind, lim in (("class", 250), ("function", 60))}
    print("the longest:", longest)
    over = [f"{unit}: {size} lines, over {limit}" for size, limit, unit, excused in found
            if size > limit and not excused]
    assert over == [], over


def test_the_length_walk_counts_a_long_function(tmp_path):
    (tmp_path / "serving").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "serving" / "long.py").write_text(f"def f():\n{body}\n\n\ndef g():  # longer: a table\n{body}\n")
    assert units({"serving.long": str(tmp_path / "serving" / "long.py")}) == [
        (62, 60, "serving.long.g", True), (62, 60, "serving.long.f", False)]


def test_every_relative_link_in_the_readme_and_docs_resolves():
    import glob
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pages = [os.path.join(root, "README.md")] + glob.glob(os.path.join(root, "docs", "*.md"))
    broken = []
    for page in pages:
        text = open(page, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
            if not os.path.exists(path):
                broken.append(f"{os.path.relpath(page, root)} -> {target}")
    assert broken == []


def test_the_chinese_quick_start_names_the_english_commands_and_figures():
    """README's 中文快速上手 stays in step with the English: every make command it gives is one the English README
    gives, and every figure it quotes (a bold number) is in docs/benchmarks.md."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    english, _, chinese = readme.partition("## 中文快速上手")
    assert chinese, "the Chinese quick start is there"
    commands = lambda text: set(re.findall(r"\bmake ([a-z][a-z-]*)", text))   # noqa: E731
    assert commands(chinese) and commands(chinese) <= commands(english), commands(chinese) - commands(english)
    figures = re.findall(r"\*\*([0-9]+\.[0-9]+)\*\*", chinese)
    benchmarks = open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8").read()
    assert figures and all(f"**{f}**" in benchmarks for f in figures), figures


def test_the_readme_map_names_every_room():
    """README's Layout block names every module and folder of serving/ (and of its packages), deploy/ and the
    bench's Python files: the map matches the tree."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = readme.index("## Layout")
    block = readme[start:readme.index("```", readme.index("```", start) + 3)]
    missing = []
    for folder in ("serving", "serving/handlers", "serving/triton", "serving/loading", "serving/grpc_wire", "deploy",
                   "benchmarks"):
        for entry in sorted(os.listdir(os.path.join(ROOT, folder))):
            path = os.path.join(ROOT, folder, entry)
            if entry.startswith(("_", ".")) or not (entry.endswith(".py") or (os.path.isdir(path) and
                                                                              folder in ("serving", "deploy"))):
                continue
            if (entry[:-3] if entry.endswith(".py") and "/" in folder else entry) not in block:
                missing.append(f"{folder}/{entry}")
    assert missing == []
