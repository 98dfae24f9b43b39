"""Checks on CreateRun, SubmitPrompts and SubmitTrajectories input that need the base model or the run,
with messages that say what to fix (ranges that need neither are in ``bounds``)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from policyopt.core.errors import InvalidArgument, NotFound
from policyopt.core.identifiers import quote
from policyopt.core.outbound import parse_base_url
from policyopt.core.types import Run, RunConfig
from policyopt.models import ModelCatalog, context_length, encode_user_prompt, vocab_size
from policyopt.server.convert import GroupInput, TrajectoryInput, TurnInput, shared_prompt_length

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _prompt_length(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Tokens of ``text`` rendered exactly as the rollout engines render it."""
    return len(encode_user_prompt(tokenizer, text))


NORMALIZER_SLACK = 4
"""How much a tokenizer's normalizer may shrink text before it is split (Unicode composition joins at most
three code points into one), so that ``ModelFacts.bytes_per_token`` stays an upper bound."""


def bytes_per_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Most UTF-8 bytes of text one token can cover: the longest vocabulary entry in bytes.

    Entries are spelled in the tokenizer's alphabet (byte-level BPE's one character per byte, SentencePiece's
    '▁' for a space, '<0x0A>' byte fallbacks), never shorter than the text they stand for.
    """
    longest = max((len(token.encode("utf-8")) for token in tokenizer.get_vocab()), default=1)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    lossless = backend is not None and backend.normalizer is None
    return max(longest, 1) * (1 if lossless else NORMALIZER_SLACK)


@dataclass(frozen=True)
class ModelFacts:
    """What the server reads of a base model, once: its tokenizer, context and longest token."""

    tokenizer: PreTrainedTokenizerBase
    context: int
    bytes_per_token: int

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on the tokens of ``text`` (stripped, as chat templates may), without tokenizing."""
        return -(-len(text.strip().encode("utf-8")) // self.bytes_per_token)


class PromptLengthChecker:
    """Rejects prompts that do not fit the base model's context with ``max_new_tokens`` to spare.

    Tokenizers load once per model and are shared by all calls; models resolve through ``models``.
    A prompt whose byte length alone proves it too long is refused without tokenizing.
    """

    def __init__(self, models: ModelCatalog) -> None:
        self._models = models
        self._lock = threading.Lock()
        self._cache: dict[str, ModelFacts] = {}

    def facts(self, base_model: str) -> ModelFacts:
        """``ModelFacts`` of ``base_model``; InvalidArgument when it cannot be resolved."""
        with self._lock:
            if base_model not in self._cache:
                from transformers import AutoTokenizer

                model_dir = self.model_dir(base_model)
                try:
                    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
                except (OSError, ValueError) as exc:
                    raise InvalidArgument(
                        f"base_model {quote(base_model)} has no loadable tokenizer ({quote(str(exc), 200)}); "
                        "save one beside the weights"
                    ) from exc
                self._cache[base_model] = ModelFacts(
                    tokenizer, context_length(model_dir), bytes_per_token(tokenizer)
                )
            return self._cache[base_model]

    def limits(self, base_model: str) -> tuple[int, int]:
        """(context length, vocabulary size) of ``base_model``; token ids must be below the latter."""
        return self.facts(base_model).context, self.vocab_size(base_model)

    def vocab_size(self, model: str) -> int:
        """Rows of the model's embedding (``vocab_size`` in config.json)."""
        directory = self.model_dir(model)
        try:
            return vocab_size(directory)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidArgument(
                f"model {quote(model)} has no readable config.json ({type(exc).__name__})"
            ) from exc

    def model_dir(self, model: str) -> Path:
        """``ModelCatalog.resolve``, with file-system errors a caller's path causes as InvalidArgument."""
        try:
            return self._models.resolve(model)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(
                f"model {quote(model)} cannot be read as a model directory ({type(exc).__name__}: "
                f"{quote(str(exc), 80)}); give a local path, 'tiny' or 'smollm2'"
            ) from exc

    def check_completion(self, config: RunConfig) -> None:
        """``max_new_tokens`` must leave room for a prompt in the base model's context."""
        context = self.facts(config.base_model).context
        if config.max_new_tokens >= context:
            raise InvalidArgument(
                f"max_new_tokens must be smaller than the context of base_model {quote(config.base_model)} "
                f"({context} tokens, prompt and completion together), got {config.max_new_tokens}; "
                f"use at most {context - 1}, less the longest prompt you will send"
            )

    def check(self, config: RunConfig, prompts: Sequence[str]) -> None:
        """Each prompt with the chat template fits ``context - max_new_tokens``: first every prompt by its
        byte length (cheap), then each by its tokens."""
        facts = self.facts(config.base_model)
        budget = facts.context - config.max_new_tokens
        for index, text in enumerate(prompts):
            fewest = facts.fewest_tokens(text)
            if fewest > budget:
                raise InvalidArgument(
                    f"prompt {index} is at least {fewest} tokens ({len(text.encode('utf-8'))} bytes), and with "
                    f"max_new_tokens={config.max_new_tokens} it exceeds the model's context of {facts.context} "
                    f"tokens; shorten it to at most {max(budget, 0)} tokens or create the run with a smaller "
                    "max_new_tokens"
                )
        for index, text in enumerate(prompts):
            length = _prompt_length(facts.tokenizer, text)
            if length > budget:
                raise InvalidArgument(
                    f"prompt {index} is {length} tokens with the chat template, and with max_new_tokens="
                    f"{config.max_new_tokens} it exceeds the model's context of {facts.context} tokens; "
                    f"shorten it to at most {max(budget, 0)} tokens or create the run with a smaller max_new_tokens"
                )


def validate_teacher(config: RunConfig, needs: frozenset[str], vocab_size: Callable[[str], int]) -> None:
    """A method that needs a teacher must name one, and a run that names one must use it.

    ``vocab_size(model)`` gives a model's vocabulary size: a local teacher must share the student's.
    """
    teacher, method = config.teacher, config.method.preset
    named = bool(teacher.model or teacher.endpoint)
    if "teacher" in needs and not named:
        raise InvalidArgument(
            f"method {method!r} needs a teacher: set teacher.model (a model directory readable by the "
            "workers) or teacher.endpoint (an OpenAI-compatible vLLM server), and teacher.coef (lambda)"
        )
    if named and "teacher" not in needs:
        raise InvalidArgument(
            f"a teacher is set but method {method!r} does not use one; pick 'grpo_opd' or 'opd', or drop teacher"
        )
    if not 0 <= teacher.coef < math.inf:
        raise InvalidArgument(
            f"teacher.coef (lambda) must be finite and >= 0 (0: the preset's), got {teacher.coef}"
        )
    if teacher.endpoint:
        parse_base_url(teacher.endpoint, "teacher.endpoint")
    if teacher.model and not teacher.endpoint:
        student, own = vocab_size(config.base_model), vocab_size(teacher.model)
        if student != own:
            raise InvalidArgument(
                f"teacher.model has a {own}-token vocabulary and base_model {student}; the teacher must use "
                "the student's tokenizer (its log-probs are compared token by token)"
            )


def _check_turn(turn: TurnInput, where: str, vocab_size: int) -> None:
    if turn.role not in ("model", "environment"):
        raise InvalidArgument(f"{where}: role is unset; use TURN_ROLE_MODEL or TURN_ROLE_ENVIRONMENT")
    if not turn.token_ids:
        raise InvalidArgument(f"{where}: has no token ids; drop empty turns")
    outside = [i for i in turn.token_ids if not 0 <= i < vocab_size]
    if outside:
        raise InvalidArgument(
            f"{where}: token id {outside[0]} is outside the base model's vocabulary of {vocab_size} tokens; "
            "send ids from the served model's own tokenizer"
        )
    if turn.role == "environment":
        if turn.logprobs or turn.reward is not None:
            raise InvalidArgument(
                f"{where}: environment turns carry token ids only; drop its log-probs, and put a reward on "
                "the model turn it rewards"
            )
        return
    if len(turn.logprobs) != len(turn.token_ids):
        raise InvalidArgument(
            f"{where}: {len(turn.logprobs)} log-probs for {len(turn.token_ids)} tokens; send the sampler's "
            "log-prob of every sampled token (vLLM: logprobs=0 with return_tokens_as_token_ids)"
        )
    if not all(math.isfinite(v) and v <= 1e-6 for v in turn.logprobs):
        raise InvalidArgument(f"{where}: log-probs must be finite and <= 0")
    if turn.reward is not None and not math.isfinite(turn.reward):
        raise InvalidArgument(f"{where}: reward must be finite")


def _check_version(version: int, where: str, run: Run) -> None:
    if version < 0:
        raise InvalidArgument(f"{where}: adapter_version must be >= 0 (0 is the base model), got {version}")
    if version > run.version:
        raise NotFound(
            f"{where}: adapter version {version} of run {run.run_id} does not exist; the latest is "
            f"{run.version} (sample with the adapter named {run.run_id}@v{run.version})"
        )
    oldest = run.version - run.config.max_staleness
    if version < oldest:
        raise InvalidArgument(
            f"{where}: adapter version {version} is {run.version - version} versions behind run "
            f"{run.run_id} (version {run.version}) and the run's max_staleness is {run.config.max_staleness}; "
            f"sample again with {run.run_id}@v{run.version}, or create the run with a larger max_staleness"
        )


def _check_trajectory(trajectory: TrajectoryInput, where: str, run: Run, limits: tuple[int, int]) -> None:
    context, vocab_size = limits
    if not trajectory.prompt_ids:
        raise InvalidArgument(f"{where}: prompt_ids is empty; send the rendered prompt before the first turn")
    if not math.isfinite(trajectory.reward):
        raise InvalidArgument(f"{where}: reward must be finite")
    outside = [i for i in trajectory.prompt_ids if not 0 <= i < vocab_size]
    if outside:
        raise InvalidArgument(
            f"{where}: prompt token id {outside[0]} is outside the base model's vocabulary of {vocab_size} tokens"
        )
    if not any(t.role == "model" for t in trajectory.turns):
        raise InvalidArgument(f"{where}: has no model turn, so there is nothing to train on")
    for k, turn in enumerate(trajectory.turns):
        _check_turn(turn, f"{where} turn {k}", vocab_size)
        if turn.role == "model":
            _check_version(turn.adapter_version, f"{where} turn {k}", run)
    length = len(trajectory.prompt_ids) + sum(len(t.token_ids) for t in trajectory.turns)
    if length > context:
        raise InvalidArgument(
            f"{where}: {length} tokens (prompt and turns) exceed the base model's context of {context}; "
            "end the episode earlier or drop old turns from the prompt"
        )


def validate_trajectory_groups(groups: Sequence[GroupInput], run: Run, limits: tuple[int, int]) -> None:
    """SubmitTrajectories input against the run: ``limits`` is (context length, vocabulary size)."""
    if not groups:
        raise InvalidArgument(
            "no groups: SubmitTrajectories needs at least one group of 2 or more trajectories"
        )
    for g, group in enumerate(groups):
        if len(group.trajectories) < 2:
            raise InvalidArgument(
                f"group {g} has {len(group.trajectories)} trajectories; a group needs at least 2 (its "
                "members are compared against each other), e.g. several attempts at the same task"
            )
        for i, trajectory in enumerate(group.trajectories):
            _check_trajectory(trajectory, f"group {g} trajectory {i}", run, limits)
        if shared_prompt_length(group) == 0:
            raise InvalidArgument(
                f"group {g}: its trajectories share no prompt token; group attempts at one task"
            )
