"""treadle's packages import each other without a cycle, every import counted (those inside
functions too: a lazy import hides a cycle, it does not remove it); `common` imports none."""
import ast
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def packages() -> dict[str, pathlib.Path]:
  """Top-level treadle packages (treadle.X) and their folders, as pyproject installs them."""
  setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  return {name.split(".")[1]: ROOT / folder for name, folder in setup["package-dir"].items()
          if name.count(".") == 1}


def imported_modules(source: str) -> set[str]:
  """Every module named by an import statement anywhere in `source`, or by a literal
  `importlib.import_module("...")`."""
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
          == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
      names.add(str(node.args[0].value))
  return names


def package_graph(folders: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  graph = {name: set() for name in folders}
  for name, folder in folders.items():
    for path in folder.rglob("*.py"):
      for module in imported_modules(path.read_text(encoding="utf-8")):
        parts = module.split(".")
        if parts[0] == "treadle" and len(parts) > 1 and parts[1] in folders and parts[1] != name:
          graph[name].add(parts[1])
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_the_package_graph_has_no_cycle():
  graph = package_graph(packages())
  assert {"common", "model", "data", "train"} <= set(graph)
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_common_imports_no_other_treadle_package():
  assert package_graph(packages())["common"] == set()


def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path):
  for name, source in {"low": "def f():\n  from treadle.high import x\n",
                       "high": "import treadle.low.y\n"}.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "m.py").write_text(source)
  graph = package_graph({"low": tmp_path / "low", "high": tmp_path / "high"})
  assert find_cycle(graph) in (["high", "low", "high"], ["low", "high", "low"])
  graph["high"].clear()
  assert find_cycle(graph) is None


def test_import_module_literals_count():
  assert "treadle.train.main" in imported_modules(
      "import importlib\nimportlib.import_module('treadle.train.main')\n")
