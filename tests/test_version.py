"""The package version is one number: pyproject.toml, sqtorch.__version__ and the newest CHANGELOG entry."""

import re
from pathlib import Path

import sqtorch

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_pyproject_and_changelog():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert sqtorch.__version__ == version
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert newest is not None and newest.group(1) == version
