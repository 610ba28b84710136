"""The package as users install it: a wheel (what the images install), not the editable checkout.

The operator's subpackages were once missing from the wheel (a hand-kept package list), which only an
import from an installed wheel shows. The dependencies come from the test venv's site-packages, added
as a plain path (so its editable-install hooks stay inactive and the checkout cannot leak in).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from images.build import project_wheel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel exactly as the images get it (built from a clean copy of the sources)."""
    return project_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_package_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("aperag_operator", "aperag"):
        source = ROOT / ("operator" if package == "aperag_operator" else "") / package
        for init in source.rglob("__init__.py"):
            assert str(init.relative_to(source.parent)) in names, f"{init} is not in the wheel"
    migrations = {n for n in names if n.startswith("aperag/migrations/versions/") and n.endswith(".py")}
    assert len(migrations) == len(list((ROOT / "aperag/migrations/versions").glob("*.py")))
    assert {"aperag/migrations/env.py", "aperag/migrations/script.py.mako"} <= names
    assert not any(n.startswith(("tests/", "e2e/", "bench/")) for n in names)


def test_the_installed_wheel_imports_and_runs_its_entry_points(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True,
        capture_output=True,
    )
    # The dependencies, as a path only: .pth files there (the checkout's editable hooks) are not run.
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = """
import aperag_operator, aperag_operator.handlers, aperag_operator.cli, aperag.cli, aperag.migrate
from aperag.api.app import create_app
import aperag_operator.builders, aperag_operator.spec, aperag_operator.contributors, aperag_operator.upgrade
for module in (aperag_operator, aperag.cli):
    assert module.__file__.startswith(SITE), module.__file__
assert aperag.migrate.MIGRATIONS_DIR.is_dir() and str(aperag.migrate.MIGRATIONS_DIR).startswith(SITE)
print("ok")
""".replace("SITE", repr(site))
    result = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    # The console scripts' entry points (pyproject.toml [project.scripts]), as the image runs them.
    for entry, args in (
        ("aperag_operator.cli", ["--help"]),
        ("aperag.cli", ["--help"]),
        ("aperag.cli", ["migrate", "heads"]),
    ):
        call = f"import sys; from {entry} import main; sys.exit(main({args!r}))"
        result = subprocess.run([python, "-c", call], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "usage" in result.stdout or '"single": true' in result.stdout, result.stdout[-2000:]
