"""Named presets: each is one RewardSide choice and one TrajectorySide choice.

Every description says which axis the preset changes relative to its ancestor, and the failure it fixes.
A run picks a preset and may override any field of either axis (see ``resolve.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from policyopt.workers.algorithms import reward_side, trajectory_side  # noqa: F401  (registers the choices)
from policyopt.workers.algorithms.params import replace_params
from policyopt.workers.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    CRITICS,
    GROUP_FILTERS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    OBJECTIVES,
    REWARD_SHAPING,
    Registry,
)
from policyopt.workers.algorithms.spec import Choice, MethodSpec, RewardSide, TrajectorySide


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    spec: MethodSpec


def _choice(registry: Registry[Any], name: str, **params: Any) -> Choice:
    return Choice(name, replace_params(registry.get(name).params_type(), params, f"{registry.path}.{name}"))


def _preset(name: str, description: str, reward: RewardSide, trajectory: TrajectorySide) -> Preset:
    return Preset(name, description, MethodSpec(name, reward, trajectory))


def _build() -> dict[str, Preset]:
    no_kl = _choice(KL_ESTIMATORS, "k3", coef=0.0)
    grpo_reward = RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "grpo", scale="group_std"))
    clip = TrajectorySide(
        objective=_choice(OBJECTIVES, "ppo_clip"),
        aggregation=_choice(AGGREGATIONS, "seq_mean_token_mean"),
        kl=no_kl,
        mismatch_correction=_choice(MISMATCH_CORRECTIONS, "none"),
    )
    pg_sum = dataclasses.replace(
        clip,
        objective=_choice(OBJECTIVES, "vanilla_pg"),
        aggregation=_choice(AGGREGATIONS, "seq_mean_token_sum"),
    )
    token_mean = _choice(AGGREGATIONS, "token_mean")
    presets = [
        _preset(
            "reinforce",
            "Baseline of the map. Reward: raw return minus a moving-average baseline (variance reduction "
            "without a critic or groups). Trajectory: vanilla -A log p summed per sequence (the REINFORCE "
            "estimator). High variance; use it to see what the other presets buy.",
            RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "reinforce", baseline="moving_average")),
            pg_sum,
        ),
        _preset(
            "ppo",
            "Reward: GAE with a value head trained alongside (per-token credit, lower variance than raw "
            "returns). Trajectory: clipped token ratio, 2 epochs x 2 mini-batches, so each sample is reused "
            "safely (fixes REINFORCE's one-update-per-sample waste and its destructive large steps).",
            RewardSide(
                estimator=_choice(ADVANTAGE_ESTIMATORS, "gae", gamma=1.0, lam=0.95),
                critic=_choice(CRITICS, "value_head"),
            ),
            dataclasses.replace(clip, aggregation=token_mean, epochs=2, mini_batches=2),
        ),
        _preset(
            "grpo",
            "Reward: group-relative advantages (mean/std over the G completions of a prompt) replace PPO's "
            "critic, which is costly and hard to fit for LLMs. Trajectory: PPO clip, per-sequence token mean. "
            "The paper's KL loss (k3, 0.04) is off here: a LoRA stays close to its base and the reference "
            "forward costs a third of a step; set trajectory_side.kl.coef to turn it on. Token-level "
            "truncated IS (cap 2) from the stored sampler log-probs: rollouts are pipelined with training, so "
            "a sample may come from the version before (or from another engine, such as vLLM), and with one "
            "update per batch PPO's ratio starts at 1 and never clips.",
            grpo_reward,
            dataclasses.replace(
                clip, mismatch_correction=_choice(MISMATCH_CORRECTIONS, "token_tis", cap=2.0)
            ),
        ),
        _preset(
            "dr_grpo",
            "GRPO with both biases removed. Reward: no std division (std scaling up-weights too-easy and "
            "too-hard prompts). Trajectory: token sums divided by a constant (per-sequence length "
            "normalization lets long wrong answers off lightly, so responses grow).",
            dataclasses.replace(grpo_reward, estimator=_choice(ADVANTAGE_ESTIMATORS, "grpo", scale="none")),
            dataclasses.replace(clip, aggregation=_choice(AGGREGATIONS, "seq_mean_token_sum_norm")),
        ),
        _preset(
            "dapo",
            "GRPO for long reasoning. Reward: drop zero-variance groups and resample (no gradient from them), "
            "soft overlong penalty (truncation noise). Trajectory: clip-higher eps_high=0.28 (entropy "
            "collapse), token-mean aggregation (long sequences are not under-weighted), no KL.",
            dataclasses.replace(
                grpo_reward,
                shaping=(_choice(REWARD_SHAPING, "overlong_penalty"),),
                group_filter=_choice(GROUP_FILTERS, "zero_variance"),
            ),
            dataclasses.replace(
                clip, objective=_choice(OBJECTIVES, "ppo_clip", eps_high=0.28), aggregation=token_mean
            ),
        ),
        _preset(
            "rloo",
            "Reward: leave-one-out baseline, unbiased where GRPO's self-inclusive mean and std scaling are "
            "not. Trajectory: vanilla policy gradient summed per sequence, the whole completion one action.",
            RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "rloo")),
            pg_sum,
        ),
        _preset(
            "reinforce_pp",
            "Reward: token returns with the KL to the reference folded in (k1, 0.01), whitened over the "
            "whole batch: stable without a critic, and without GRPO's per-prompt std overfitting easy "
            "prompts. Trajectory: PPO clip, token mean.",
            RewardSide(
                estimator=_choice(ADVANTAGE_ESTIMATORS, "reinforce_pp"),
                shaping=(_choice(REWARD_SHAPING, "kl_penalty", coef=0.01, estimator="k1"),),
            ),
            dataclasses.replace(clip, aggregation=token_mean),
        ),
        _preset(
            "reinforce_pp_baseline",
            "Reward: subtract the group mean, then whiten over the batch (GRPO's baseline without the "
            "noisy per-group std). Trajectory: PPO clip, token mean, a small k2 KL loss to the reference "
            "(0.001) as in REINFORCE++-baseline.",
            RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "reinforce_pp_baseline")),
            dataclasses.replace(clip, aggregation=token_mean, kl=_choice(KL_ESTIMATORS, "k2", coef=0.001)),
        ),
        _preset(
            "remax",
            "Reward: the reward of a greedy rollout of the same prompt is the baseline, so one sample per "
            "prompt suffices (the rollout side must score a greedy completion per prompt). Trajectory: "
            "vanilla policy gradient, token mean.",
            RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "remax")),
            dataclasses.replace(pg_sum, aggregation=token_mean),
        ),
        _preset(
            "gspo",
            "GRPO's reward side. Trajectory: the ratio and the clipping move to the sequence level "
            "(geometric mean of token ratios), matching a sequence-level reward; token-level ratios are "
            "noisy and destabilize long and MoE training.",
            grpo_reward,
            dataclasses.replace(clip, objective=_choice(OBJECTIVES, "gspo")),
        ),
        _preset(
            "cispo",
            "GRPO's reward side. Trajectory: clip the stop-gradient IS weight instead of the update, so rare "
            "high-ratio tokens (often the reasoning forks) keep their gradient instead of being clipped "
            "out; token mean.",
            grpo_reward,
            dataclasses.replace(clip, objective=_choice(OBJECTIVES, "cispo"), aggregation=token_mean),
        ),
        *_agentic_and_distillation_presets(clip, token_mean),
        *_asynchronous_presets(grpo_reward, clip, token_mean),
    ]
    return {p.name: p for p in presets}


def _agentic_and_distillation_presets(clip: TrajectorySide, token_mean: Choice) -> list[Preset]:
    """Presets for client-driven multi-turn trajectories (SubmitTrajectories) and on-policy distillation."""
    agentic_trajectory = dataclasses.replace(
        clip,
        aggregation=token_mean,
        mismatch_correction=_choice(MISMATCH_CORRECTIONS, "token_tis", cap=2.0),
    )
    return [
        _preset(
            "agentic_grpo",
            "Multi-turn, tool-using trajectories sent by the client. Reward: GRPO over model turns "
            "(turn_grpo): the outcome on every turn by default, per-turn discounted returns with "
            "credit='discounted'; environment tokens are masked out of the loss. Trajectory: PPO clip, "
            "token mean (turn counts vary), token-level truncated IS from the stored sampler log-probs, "
            "which corrects turns sampled by an older adapter version or another engine.",
            RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "turn_grpo")),
            agentic_trajectory,
        ),
        _preset(
            "grpo_opd",
            "GRPO with on-policy distillation. Reward: the group advantage plus the dense per-token "
            "teacher term -lambda*(log pi - log pi_teacher) (needs a teacher): the sparse task reward is "
            "kept while the teacher gives every token a signal, so small students learn faster. "
            "Trajectory: PPO clip, token mean (the teacher term is per token).",
            RewardSide(estimator=_choice(ADVANTAGE_ESTIMATORS, "on_policy_distillation", coef=0.5)),
            agentic_trajectory,
        ),
        _preset(
            "opd",
            "Pure on-policy distillation: the teacher term alone (task_coef 0, rewards ignored) minimizes "
            "the reverse KL to the teacher on the student's own samples, which avoids the exposure bias of "
            "off-policy distillation. Trajectory: as grpo_opd.",
            RewardSide(
                estimator=_choice(ADVANTAGE_ESTIMATORS, "on_policy_distillation", coef=1.0, task_coef=0.0)
            ),
            agentic_trajectory,
        ),
    ]


def _asynchronous_presets(grpo_reward: RewardSide, clip: TrajectorySide, token_mean: Choice) -> list[Preset]:
    """Presets for samples from a sampler up to ``max_staleness`` versions behind the trainer."""
    return [
        _preset(
            "decoupled_ppo",
            "AReaL's decoupled PPO for stale samples. GRPO's reward side. Trajectory: the trust region and the "
            "off-policy correction come apart. PPO clips pi_theta/pi_prox, pi_prox being the trainer's weights "
            "before the update, so the step size does not grow with staleness; each token is weighted by the "
            "detached pi_prox/pi_behav from the stored sampler log-probs and dropped above 5 "
            "(token_masked_is), which corrects samples up to max_staleness versions old that plain PPO clip "
            "trains on as if they were on-policy. Token mean.",
            grpo_reward,
            dataclasses.replace(
                clip,
                aggregation=token_mean,
                mismatch_correction=_choice(MISMATCH_CORRECTIONS, "token_masked_is", low=0.0, high=5.0),
            ),
        ),
    ]


PRESETS: dict[str, Preset] = _build()
