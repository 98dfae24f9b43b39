"""Bad input gets INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION with a message saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyopt.client import Client, FailedPrecondition, InvalidArgument, NotFound, RunHandle


def test_an_unknown_run_is_not_found(client_a: Client) -> None:
    with pytest.raises(NotFound, match="ListRuns"):
        client_a.get_run("run-does-not-exist")
    with pytest.raises(NotFound):
        client_a.submit_prompts("run-does-not-exist", ["hello"])


def test_submitting_no_prompts_is_invalid(run_a: RunHandle) -> None:
    with pytest.raises(InvalidArgument, match="at least one prompt"):
        run_a.submit_prompts([])


def test_an_empty_prompt_is_invalid(run_a: RunHandle) -> None:
    with pytest.raises(InvalidArgument, match=r"prompts \[1\] have empty text"):
        run_a.submit_prompts(["fine", "  "])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group_size": 1}, r"group_size must be in \[2, 64\]"),
        ({"group_size": 0}, r"group_size must be in \[2, 64\]"),
        ({"prompts_per_step": 0}, r"prompts_per_step must be in \[1, 64\]"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"engine": "tgi"}, "engine must be one of"),
    ],
)
def test_out_of_range_run_options_are_invalid(
    client_a: Client, tiny_model_dir: Path, options: dict, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        client_a.create_run(str(tiny_model_dir), **options)


def test_an_unknown_method_preset_is_invalid(client_a: Client, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="grpo"):
        client_a.create_run(str(tiny_model_dir), method="no-such-method")


def test_a_base_model_that_is_not_a_model_directory_is_invalid(client_a: Client, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="config.json"):
        client_a.create_run(str(tmp_path))


def test_an_unknown_reward_endpoint_is_not_found(client_a: Client, tiny_model_dir: Path) -> None:
    with pytest.raises(NotFound, match="RegisterRewardEndpoint"):
        client_a.create_run(str(tiny_model_dir), reward_endpoint="never-registered")


def test_a_prompt_longer_than_the_context_is_invalid(run_a: RunHandle) -> None:
    long_prompt = " ".join(f"word{i}" for i in range(600))  # the tiny model's context is 512 tokens
    with pytest.raises(InvalidArgument, match=r"prompt 1 is \d+ tokens .* context of 512 tokens; shorten it"):
        run_a.submit_prompts(["short one", long_prompt])


def test_prompts_to_a_cancelled_run_fail_the_precondition(run_a: RunHandle) -> None:
    run_a.cancel()
    with pytest.raises(FailedPrecondition, match="cancelled and takes no more prompts"):
        run_a.submit_prompts(["What is 2 + 2?"])


def test_metadata_must_match_the_prompts_one_to_one(run_a: RunHandle) -> None:
    with pytest.raises(InvalidArgument, match="one per prompt"):
        run_a.submit_prompts(["a", "b"], metadata=[{"answer": "1"}])


def test_valid_prompts_are_queued_and_counted(run_a: RunHandle) -> None:
    ids = run_a.submit_prompts(["What is 2 + 2?", "What is 3 + 3?"], metadata=[{"answer": 4}, {"answer": 6}])
    assert len(ids) == 2 and len(set(ids)) == 2
    assert run_a.refresh().prompts_submitted == 2


def test_unset_options_take_the_defaults_and_set_ones_are_kept(
    client_a: Client, tiny_model_dir: Path
) -> None:
    run = client_a.create_run(
        str(tiny_model_dir), temperature=0.5, lora_rank=4, reward_side={"estimator": "rloo"}
    )
    assert run.info.temperature == 0.5
    assert run.info.lora_rank == 4
    assert run.info.group_size == 4
    assert run.info.reward_side == {"estimator": "rloo"}


def test_list_methods_shows_the_presets_and_the_choices(client_a: Client) -> None:
    catalog = client_a.list_methods()
    assert "grpo" in [p.name for p in catalog.presets]
    assert catalog.choices and all(c.axis and c.name for c in catalog.choices)


def test_prompts_need_a_reward_endpoint_unless_the_method_ignores_task_rewards(
    client_a: Client, tiny_model_dir: Path
) -> None:
    scored = client_a.create_run(base_model=str(tiny_model_dir), method="grpo")
    with pytest.raises(FailedPrecondition, match="has no reward endpoint"):
        scored.submit_prompts(["hello"])
    distilled = client_a.create_run(
        base_model=str(tiny_model_dir), method="opd", teacher_model=str(tiny_model_dir), teacher_coef=1.0
    )
    assert len(distilled.submit_prompts(["hello"])) == 1


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "x" * 3000,
        "é" * 500,
        "<|im_start|>" * 50,
        " \n\t " * 100 + "a",
        "😀" * 300,
        "the sum" * 200,
    ],
)
def test_the_byte_bound_on_tokens_never_exceeds_the_real_count(tiny_model_dir: Path, text: str) -> None:
    from transformers import AutoTokenizer

    from policyopt.models import encode_user_prompt
    from policyopt.server.validation import ModelFacts, bytes_per_token

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    facts = ModelFacts(tokenizer, 512, bytes_per_token(tokenizer))
    assert 0 < facts.fewest_tokens(text) <= len(encode_user_prompt(tokenizer, text))
