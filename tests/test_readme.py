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
        f"{c.axis}:{c.name}"
        for c in choices
        if c.axis != "trajectory_side.settings" and f"`{c.name}`" not in README
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

    block = next(b.split("```", 1)[0] for b in README.split("```python")[1:] if 'method="dapo"' in b)
    call = next(n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call) and n.keywords)
    options = {k.arg: k.value for k in call.keywords}
    spec = resolve_method(
        MethodChoice(
            ast.literal_eval(options["method"]),
            ast.literal_eval(options["reward_side"]),
            ast.literal_eval(options["trajectory_side"]),
        )
    )
    assert spec.trajectory_side.mismatch_correction.name == "token_tis"
    assert spec.reward_side.group_filter.name == "zero_variance"


def test_readme_settings_table_lists_every_setting() -> None:
    from policyopt.core.settings import _ENV

    table = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    missing = [env for env in _ENV if f"`{env}`" not in table]
    assert not missing, f"README's Settings table lacks {missing}"
