"""README's method docs stay in step with the registries (no names that drifted)."""

from __future__ import annotations

from pathlib import Path

from policyopt.workers.algorithms import PRESETS, list_methods

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_names_every_preset() -> None:
    missing = [name for name in PRESETS if f"`{name}`" not in README]
    assert not missing, f"README's Methods section lacks presets {missing}"


def test_readme_names_every_registered_choice() -> None:
    choices, _ = list_methods()
    missing = [
        f"{c.axis}:{c.name}" for c in choices if c.axis != "trajectory_side.settings" and f"`{c.name}`" not in README
    ]
    assert not missing, f"README's Methods section lacks choices {missing}"


def test_readme_quickstart_has_exactly_the_two_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0].strip() for b in quickstart.split("```bash")[1:]]
    assert blocks == ['pip install -e ".[all]" && policyopt demo', "bash scripts/test.sh"]


def test_readme_override_example_resolves() -> None:
    import ast

    from policyopt.core.types import MethodChoice
    from policyopt.workers.algorithms import resolve_method

    example = README.split('method="dapo"', 1)[1].split("```", 1)[0]
    reward = ast.literal_eval(example.split("reward_side=", 1)[1].split(",\n", 1)[0])
    trajectory = ast.literal_eval(example.split("trajectory_side=", 1)[1].rsplit(")", 1)[0])
    spec = resolve_method(MethodChoice("dapo", reward, trajectory))
    assert spec.trajectory_side.mismatch_correction.name == "token_tis"
