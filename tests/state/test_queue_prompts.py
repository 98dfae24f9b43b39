"""WorkQueue's prompt side on a real Valkey: fair claiming across runs, delays, recovery, the legacy stream."""

from __future__ import annotations

import time

import redis

from policyopt.core.types import PromptTask, TrajectoryGroup, to_json
from policyopt.state.queue import (
    DELAYED_PROMPTS_KEY,
    PROMPT_RUNS_KEY,
    PROMPTS_STREAM,
    ROLLOUT_GROUP,
    WorkQueue,
    prompts_stream,
)


def tasks(run_id: str, n: int, prefix: str = "p") -> list[PromptTask]:
    return [PromptTask(run_id=run_id, prompt_id=f"{prefix}{i}", prompt=f"q{i}") for i in range(n)]


def drain(queue: WorkQueue, consumer: str = "w", count: int = 4) -> list[tuple[str, PromptTask]]:
    """Claim and complete everything queued; returns the claims in order."""
    seen = []
    while claimed := queue.claim_prompts(consumer, count=count, block_ms=0):
        for message_id, task in claimed:
            queue.complete_prompt(message_id, task, None)
        seen += claimed
    return seen


def test_a_run_submitted_later_is_served_within_the_first_claims(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    queue.enqueue_prompts(tasks("run-a", 200, "a"))
    first = queue.claim_prompts("w", count=4, block_ms=0)
    queue.enqueue_prompts(tasks("run-b", 4, "b"))
    rounds = [first] + [queue.claim_prompts("w", count=4, block_ms=0) for _ in range(3)]
    runs = [{t.run_id for _, t in batch} for batch in rounds]
    assert runs[0] == {"run-a"} and {"run-b"} in runs[:2]  # one batch of A, then B
    assert all(len(batch) == 4 and len(r) == 1 for batch, r in zip(rounds, runs, strict=True))


def test_claims_alternate_between_busy_runs(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    for run in ("run-a", "run-b", "run-c"):
        queue.enqueue_prompts(tasks(run, 8, run))
    order = [queue.claim_prompts("w", count=2, block_ms=0)[0][1].run_id for _ in range(6)]
    assert sorted(order[:3]) == sorted(order[3:]) == ["run-a", "run-b", "run-c"]


def test_everything_queued_is_claimed_once_and_the_index_empties(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    queue.enqueue_prompts(tasks("run-a", 9, "a"))
    queue.enqueue_prompts(tasks("run-b", 5, "b"))
    claims = drain(queue)
    assert sorted(t.prompt_id for _, t in claims) == sorted(
        [f"a{i}" for i in range(9)] + [f"b{i}" for i in range(5)]
    )
    assert queue.claim_prompts("w", count=4, block_ms=0) == []
    assert fresh_redis.zcard(PROMPT_RUNS_KEY) == 0
    assert queue.queued_prompts("run-a") == queue.queued_prompts("run-b") == 0
    queue.enqueue_prompts(tasks("run-a", 1, "late"))  # a run that left the index joins again
    assert [t.prompt_id for _, t in queue.claim_prompts("w", count=4, block_ms=0)] == ["late0"]


def test_a_run_with_only_claimed_prompts_stays_indexed_until_they_are_acked(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    queue.enqueue_prompts(tasks("run-a", 2))
    claimed = queue.claim_prompts("w", count=2, block_ms=0)
    assert queue.claim_prompts("w", count=2, block_ms=0) == []
    assert fresh_redis.zscore(PROMPT_RUNS_KEY, "run-a") is not None  # still indexed: its prompts are pending
    for message_id, task in claimed:
        queue.complete_prompt(message_id, task, None)
    assert queue.claim_prompts("w", count=2, block_ms=0) == []
    assert fresh_redis.zcard(PROMPT_RUNS_KEY) == 0


def test_a_dead_consumers_prompt_is_reclaimed_after_claim_idle_ms(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis, claim_idle_ms=200)
    queue.enqueue_prompts(tasks("run-a", 1))
    (dead_claim,) = WorkQueue(fresh_redis, claim_idle_ms=200).claim_prompts("dead", count=1, block_ms=0)
    assert queue.claim_prompts("survivor", count=1, block_ms=0) == []  # not idle long enough yet
    time.sleep(0.3)
    (claim,) = queue.claim_prompts("survivor", count=1, block_ms=0)
    assert claim == dead_claim
    queue.complete_prompt(*claim, None)
    assert queue.pending_prompts("run-a") == 0 and queue.queued_prompts("run-a") == 0


def test_touching_a_prompt_keeps_it_from_being_reclaimed(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis, claim_idle_ms=200)
    queue.enqueue_prompts(tasks("run-a", 1))
    claims = queue.claim_prompts("owner", count=1, block_ms=0)
    for _ in range(4):
        time.sleep(0.1)
        queue.touch_prompts("owner", claims)
    assert WorkQueue(fresh_redis, claim_idle_ms=200).claim_prompts("other", count=1, block_ms=0) == []


def test_a_delayed_prompt_comes_back_when_due_and_still_counts_as_queued(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    queue.enqueue_prompts(tasks("run-a", 1))
    ((message_id, task),) = queue.claim_prompts("w", count=1, block_ms=0)
    retry = PromptTask(task.run_id, task.prompt_id, task.prompt, reward_attempts=1)
    queue.delay_prompt(message_id, retry, delay_s=30.0)
    assert queue.pending_prompts("run-a") == 0 and queue.queued_prompts("run-a") == 1
    ((due, delayed),) = queue.delayed_prompts()
    assert delayed == retry and due > time.time() + 25
    assert queue.move_due_prompts(now=time.time()) == 0
    assert queue.claim_prompts("w", count=1, block_ms=0) == []
    assert queue.move_due_prompts(now=due) == 1
    assert fresh_redis.zcard(DELAYED_PROMPTS_KEY) == 0
    ((_, back),) = queue.claim_prompts("w", count=1, block_ms=0)
    assert back == retry and back.reward_attempts == 1


def test_two_delays_of_the_same_prompt_are_both_kept(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    queue.enqueue_prompts([*tasks("run-a", 1), *tasks("run-a", 1)])  # the same prompt submitted twice
    for message_id, task in queue.claim_prompts("w", count=2, block_ms=0):
        queue.delay_prompt(message_id, task, delay_s=0.0)
    assert queue.move_due_prompts() == 2
    assert len(queue.claim_prompts("w", count=4, block_ms=0)) == 2


def test_prompts_in_the_legacy_stream_are_still_served(fresh_redis: redis.Redis) -> None:
    fresh_redis.xgroup_create(PROMPTS_STREAM, ROLLOUT_GROUP, id="0", mkstream=True)
    for task in tasks("run-old", 3, "old"):  # as an older server wrote them
        fresh_redis.xadd(PROMPTS_STREAM, {"data": to_json(task)})
    fresh_redis.incrby("po:run:run-old:queued", 3)
    queue = WorkQueue(fresh_redis)
    claims = drain(queue)
    assert sorted(t.prompt_id for _, t in claims) == ["old0", "old1", "old2"]
    assert fresh_redis.xlen(PROMPTS_STREAM) == 0 and queue.queued_prompts("run-old") == 0


def test_a_legacy_prompt_held_by_a_dead_old_worker_is_moved_after_claim_idle_ms(
    fresh_redis: redis.Redis,
) -> None:
    queue = WorkQueue(fresh_redis, claim_idle_ms=100)
    fresh_redis.xadd(PROMPTS_STREAM, {"data": to_json(tasks("run-old", 1)[0])})
    fresh_redis.xreadgroup(ROLLOUT_GROUP, "old-worker", {PROMPTS_STREAM: ">"}, count=1)  # then it died
    assert queue.migrate_legacy_prompts("w") == 0
    time.sleep(0.15)
    assert queue.migrate_legacy_prompts("w") == 1
    assert fresh_redis.xlen(prompts_stream("run-old")) == 1 and fresh_redis.xlen(PROMPTS_STREAM) == 0


def test_resampling_a_group_sends_its_prompt_to_the_runs_stream(fresh_redis: redis.Redis) -> None:
    queue = WorkQueue(fresh_redis)
    group = TrajectoryGroup(
        run_id="run-a",
        group_id="g",
        prompt_id="p0",
        prompt="q",
        prompt_ids=[1],
        trajectories=[],
        adapter_version=0,
    )
    (group_id,) = queue.enqueue_groups("run-a", [group])
    queue.resample_group(group_id, group, attempt=1)
    ((_, task),) = queue.claim_prompts("w", count=1, block_ms=0)
    assert (task.prompt_id, task.attempt) == ("p0", 1) and queue.queued_groups("run-a") == 0


def test_a_run_with_enough_groups_waiting_for_its_trainer_is_passed_over(fresh_redis: redis.Redis) -> None:
    """``ahead`` = 2 x (max_staleness + 1) x prompts_per_step = 2 here: groups waiting for the trainer and
    prompts being scored both count; another run is served meanwhile, and room comes back as steps ack."""
    from policyopt.core.types import RunConfig
    from policyopt.state.runs import RunStore, groups_ahead

    config = RunConfig(base_model="tiny", prompts_per_step=1, max_staleness=0)
    assert groups_ahead(config) == 2
    runs, queue = RunStore(fresh_redis), WorkQueue(fresh_redis)
    limited = runs.create_run("t", config).run_id
    queue.enqueue_prompts(tasks(limited, 10, "l"))
    queue.enqueue_prompts(tasks("run-other", 10, "o"))

    def claim_of(run_id: str) -> list[tuple[str, PromptTask]]:
        claimed = queue.claim_prompts("w", count=4, block_ms=0)
        while claimed and claimed[0][1].run_id != run_id:
            claimed = queue.claim_prompts("w", count=4, block_ms=0)
        return claimed

    first = claim_of(limited)
    assert len(first) == 2  # two being scored: no room for more
    assert all(t.run_id == "run-other" for _, t in queue.claim_prompts("w", count=4, block_ms=0))
    message_id, task = first[0]
    group = TrajectoryGroup(limited, "g0", task.prompt_id, task.prompt, [1], [], adapter_version=0)
    queue.complete_prompt(message_id, task, group)  # 1 group queued + 1 prompt being scored: still full
    assert all(t.run_id == "run-other" for _, t in queue.claim_prompts("w", count=4, block_ms=0))
    ((group_message, _),) = queue.read_groups(limited, "trainer-1", count=1, block_ms=1)
    pipe = fresh_redis.pipeline(transaction=True)
    queue.ack_groups(pipe, limited, [group_message])  # the trainer's commit
    pipe.execute()
    again = claim_of(limited)
    assert len(again) == 1 and again[0][1].run_id == limited
