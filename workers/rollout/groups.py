"""From a claimed prompt to a TrajectoryGroup: encoding, the run's sampling parameters, packaging."""

from __future__ import annotations

import uuid

from policyopt.core.errors import InvalidArgument
from policyopt.core.telemetry import inject_context
from policyopt.core.types import PromptTask, Run, RunConfig, Trajectory, TrajectoryGroup
from policyopt.workers.engines import RolloutEngine, Sample, SamplingParams


def sampling_params(config: RunConfig, prompt_len: int, context_length: int) -> SamplingParams:
    """The run's sampling, with max_new_tokens cut so prompt + completion fit the context."""
    room = max(1, context_length - prompt_len)
    return SamplingParams(
        max_new_tokens=min(config.max_new_tokens, room), temperature=config.temperature, top_p=config.top_p
    )


def encode_prompt(engine: RolloutEngine, task: PromptTask) -> list[int] | Exception:
    """The prompt's token ids with the chat template, or why it cannot be rolled out."""
    prompt_ids = engine.encode_chat(task.prompt)
    if len(prompt_ids) >= engine.context_length:
        return InvalidArgument(
            f"the prompt is {len(prompt_ids)} tokens with the chat template and the model's context is "
            f"{engine.context_length}; shorten the prompt"
        )
    return prompt_ids


def _trajectory(sample: Sample, reward: float, version: int, components: dict[str, float]) -> Trajectory:
    return Trajectory(
        completion_ids=sample.completion_ids,
        sampler_logprobs=sample.sampler_logprobs,
        text=sample.text,
        reward=reward,
        finish_reason=sample.finish_reason,
        version=version,
        reward_components=components,
    )


def package_group(
    run: Run,
    task: PromptTask,
    prompt_ids: list[int],
    samples: list[Sample],
    rewards: list[float],
    baseline: float | None,
    components: list[dict[str, float]] | None = None,
) -> TrajectoryGroup:
    """The scored group of one prompt, sampled with the run's current version; carries the current trace.

    ``components``: each completion's named reward components (none when the endpoint gave only totals).
    """
    named = components or [{} for _ in samples]
    trajectories = [
        _trajectory(s, reward, run.version, c) for s, reward, c in zip(samples, rewards, named, strict=True)
    ]
    return TrajectoryGroup(
        run_id=run.run_id,
        group_id=f"{task.prompt_id}-{uuid.uuid4().hex[:8]}",
        prompt_id=task.prompt_id,
        prompt=task.prompt,
        prompt_ids=prompt_ids,
        trajectories=trajectories,
        adapter_version=run.version,
        metadata=task.metadata,
        baseline_reward=baseline,
        trace=inject_context(),
        attempt=task.attempt,
    )


__all__ = ["encode_prompt", "package_group", "sampling_params"]
