"""The test tree stays one you can find your way in: no test module imports another test
module or a conftest; shared helpers live in ``tests/helpers/``, fixtures in conftest.py."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, relative ones spelled with their leading dots."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found += [module] if node.module else [f"{module}{a.name}" for a in node.names]
    return found


def is_test_code(module: str) -> bool:
    """A test module or a conftest, named absolutely (``tests.web.test_admin``) or
    relatively (``.test_admin``)."""
    last = module.rsplit(".", 1)[-1]
    in_tests = module.startswith(("tests.", ".")) or module == "tests"
    return in_tests and (last.startswith("test_") or last == "conftest")


def test_no_module_imports_a_test_module_or_a_conftest():
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for module in imported_modules(path)
        if is_test_code(module)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_every_way_of_importing_a_test_module(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "from tests.web.test_admin import operator\n"
        "from .test_store import book_rows\n"
        "from . import test_store\n"
        "import tests.api.test_api\n"
        "from tests.conftest import ROOT\n"
        "from tests.helpers import eventually\n"
        "from engines_app.testing import Installation\n"
    )
    flagged = [module for module in imported_modules(sample) if is_test_code(module)]
    assert flagged == [
        "tests.web.test_admin",
        ".test_store",
        ".test_store",
        "tests.api.test_api",
        "tests.conftest",
    ]
