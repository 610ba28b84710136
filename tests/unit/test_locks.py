"""requirements/*.txt, what goes into the images, agree with pyproject.toml (`make lock` regenerates them)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def pins(lock: str) -> dict[str, str]:
    """name -> version of a lock file; every pin carries hashes."""
    text = (ROOT / "requirements" / lock).read_text()
    found = {}
    for block in re.split(r"\n(?=\S)", text):
        match = PIN.match(block)
        if match:
            assert "--hash=sha256:" in block, f"{lock}: {match.group(1)} has no hash"
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


@pytest.mark.parametrize("extra", ["app", "operator"])
def test_every_requirement_of_the_image_is_pinned_within_its_range(extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins(f"{extra}.txt")
    for line in [*project["dependencies"], *project["optional-dependencies"][extra]]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements/{extra}.txt: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements/{extra}.txt pins {name}=={locked[name]}, outside {requirement.specifier}: run `make lock`"
        )


def test_the_model_and_pip_are_pinned() -> None:
    model_in = (ROOT / "requirements" / "model.in").read_text()
    (wanted,) = [Requirement(line) for line in model_in.splitlines() if line and not line.startswith("#")]
    assert pins("model.txt") == {canonicalize_name(wanted.name): str(wanted.specifier).removeprefix("==")}
    assert set(pins("pip.txt")) == {"pip"}
