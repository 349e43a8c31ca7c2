"""The house rules of the code's layout, read from the modules' own imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where the Celery app may be imported: the task modules, the one publishing module, and the
#: package's own `__init__` (which `celery -A worker` reads to find the app).
MAY_IMPORT_APP = {"worker/publish.py", "worker/__init__.py"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, wherever in the file (function-local imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_only_tasks_and_the_publishing_module_import_the_celery_app() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in [*_modules("worker", "config", "bench"), ROOT / "celeryconfig.py"]
        if str(path.relative_to(ROOT)) not in MAY_IMPORT_APP and "worker.app" in _imports(path)
    ]
    assert offenders == [], "publish through worker/publish.py instead of importing worker.app"


def test_the_address_module_is_a_leaf() -> None:
    ours = {m for m in _imports(ROOT / "worker" / "addresses.py") if m.split(".")[0] == "worker"}
    assert ours == set()


def test_domain_packages_do_not_reach_into_the_mailchimp_gateway_for_addresses() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules("worker")
        if "worker.mailchimp.email_hash" in _imports(path)
        or "worker.signups.message.normalize_email" in _imports(path)
    ]
    assert offenders == []
