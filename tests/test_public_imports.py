"""Tests, benchmarks and experiments use only public hyperjax names (STYLE.md section 8, issue 10 section 3):
no module under tests/, benchmarks/ or experiments/ imports `hyperjax._src`, except the listed ones."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# file -> why it may import hyperjax._src; an entry whose file no longer does fails, so the list stays exact
EXCEPTIONS = {
    "tests/test_paths.py": "unit test of paths.nest / unnest / key_name, which have no public form",
}


def private_imports(source: str) -> list[str]:
    """The `hyperjax._src...` modules (or `from hyperjax import _src`) a source file imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("hyperjax._src")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("hyperjax._src"):
                found.append(node.module)
            elif node.module == "hyperjax":
                found += [f"hyperjax.{a.name}" for a in node.names if a.name == "_src"]
    return found


def offenders() -> dict[str, list[str]]:
    out = {}
    for folder in ("tests", "benchmarks", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if bad := private_imports(path.read_text()):
                out[path.relative_to(ROOT).as_posix()] = bad
    return out


def test_only_the_listed_files_import_hyperjax_src():
    found = offenders()
    unexpected = {f: m for f, m in found.items() if f not in EXCEPTIONS}
    assert not unexpected, f"import public names (hyperjax, hyperjax.testing) instead: {unexpected}"
    stale = sorted(set(EXCEPTIONS) - set(found))
    assert not stale, f"these files no longer import hyperjax._src; remove them from EXCEPTIONS: {stale}"


@pytest.mark.parametrize("source,want", [
    ("from hyperjax._src.paths import nest", ["hyperjax._src.paths"]),
    ("import hyperjax._src.spec as s", ["hyperjax._src.spec"]),
    ("from hyperjax import _src, testing", ["hyperjax._src"]),
    ("def f():\n    from hyperjax._src import paths\n", ["hyperjax._src"]),           # inside a function
    ("import hyperjax as hj\nfrom hyperjax.testing import mlp_spec\nx = 'hyperjax._src'", []),
], ids=["from-module", "import-as", "from-package", "nested", "public-and-a-string"])
def test_private_imports_are_found(source, want):
    assert private_imports(source) == want
