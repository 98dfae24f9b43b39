"""docs/methods.md stays in step with the registries, the presets and the diagnostics: nothing left out,
no name that drifted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policyopt.workers.algorithms import PRESETS, list_methods
from policyopt.workers.algorithms.diagnostics import DETECTORS
from policyopt.workers.algorithms.registry import ALL_REGISTRIES, Registry

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "methods.md").read_text()


def section(heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#)", DOC + "\n#", re.MULTILINE | re.DOTALL)
    assert match, f"docs/methods.md lacks the heading {heading!r}"
    return match.group(1)


def table_names(text: str) -> list[str]:
    """The backticked names in the first column of the tables in ``text``."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE)


@pytest.mark.parametrize("registry", ALL_REGISTRIES, ids=lambda r: r.path)
def test_each_slot_lists_exactly_its_registered_choices(registry: Registry[object]) -> None:
    listed = table_names(section(f"### `{registry.path}`"))
    assert sorted(listed) == registry.names(), f"docs/methods.md's {registry.path} table drifted"


def test_each_choice_names_its_parameters_in_its_slot() -> None:
    choices, _ = list_methods()
    missing = [
        f"{c.axis}:{c.name}.{p.name}"
        for c in choices
        for p in c.parameters
        if f"`{p.name}`" not in section(f"### `{c.axis}`")
    ]
    assert not missing, f"docs/methods.md lacks parameters {missing}"


def test_presets_table_lists_exactly_the_presets() -> None:
    assert sorted(table_names(section("## Presets"))) == sorted(PRESETS)


def test_compound_failures_table_lists_every_warning() -> None:
    assert table_names(section("## Compound failures")) == [d.name for d in DETECTORS]


def test_readme_links_the_map() -> None:
    readme = (ROOT / "README.md").read_text()
    methods = readme.split("## Methods", 1)[1].split("\n## ", 1)[0]
    assert "(docs/methods.md)" in methods
