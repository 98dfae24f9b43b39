"""CreateRun's and AddEvalPrompts' held-out evaluation: checks of the eval set, and what a new run starts with.

A new run with eval prompts gets them in ``EvalStore`` and an evaluation of version 0 (the base, or the
warm start's adapter) queued as the baseline the promotion rule compares with, in the MULTI that creates the
run (``RunStore.create_run``). The trainer queues the
evaluations of later versions in each commit's MULTI (``workers/train/retention.evaluation_due``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policyopt.core.errors import FailedPrecondition, InvalidArgument
from policyopt.core.identifiers import quote
from policyopt.core.types import EvalPrompt, Run, RunConfig, RunStatus
from policyopt.state.evals import EvalStore


def check_eval_prompts(
    prompts: Sequence[EvalPrompt], config: RunConfig, check_lengths: Callable[[RunConfig, list[str]], None]
) -> None:
    """Every eval prompt has text and fits the run's context like a training prompt."""
    empty = [i for i, p in enumerate(prompts) if not p.text.strip()]
    if empty:
        raise InvalidArgument(
            f"eval prompts {quote(empty, 200)} have empty text; every eval prompt needs text"
        )
    if prompts:
        check_lengths(config, [p.text for p in prompts])


def check_accepts_eval_prompts(run: Run, count: int) -> None:
    """AddEvalPrompts needs a running run that evaluates, and at least one prompt."""
    if run.status != RunStatus.RUNNING:
        raise FailedPrecondition(f"run {run.run_id} is {run.status.value} and is no longer evaluated")
    if run.config.eval.every <= 0:
        raise FailedPrecondition(
            f"run {run.run_id} was created without evaluation (eval.every is 0); create a run with "
            "eval.every > 0 to evaluate it"
        )
    if count == 0:
        raise InvalidArgument("no prompts: AddEvalPrompts needs at least one prompt")


def wants_baseline(evals: EvalStore, run: Run) -> bool:
    """Whether eval prompts arriving now should queue version 0's evaluation: the run is still at version 0
    and has no baseline (later, the next scheduled evaluation is the first; ``beats_best`` then has none)."""
    return run.version == 0 and evals.promotion_state(run.run_id).base is None


__all__ = ["check_accepts_eval_prompts", "check_eval_prompts", "wants_baseline"]
