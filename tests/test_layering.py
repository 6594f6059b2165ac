"""Dependencies run one way: cache/ <- pipeline/ (the library) <- stages/ (the stages and the CLI on top)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(package: str) -> dict[str, set[str]]:
    """module file -> top-level project packages it imports (anywhere in the file, lazy imports included)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                first = node.args[0].value if isinstance(node.args[0], ast.Constant) else \
                    next((v.value for v in node.args[0].values if isinstance(v, ast.Constant)), "")
                names.add(str(first).split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_library_never_imports_the_stages_or_the_cli():
    offenders = {f: n for f, n in _imports("pipeline").items() if "stages" in n}
    assert not offenders, offenders


def test_the_cache_imports_nothing_else_of_the_project():
    offenders = {f: n for f, n in _imports("cache").items() if n & {"pipeline", "stages"}}
    assert not offenders, offenders


def test_the_check_sees_lazy_and_dynamic_imports(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def f():\n    from stages.train import x\n"
                                           "importlib.import_module(f'stages.cli.{x}')\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert _imports("pkg") == {"pkg/m.py": {"stages"}}
