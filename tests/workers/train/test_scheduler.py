"""FairScheduler on hand-computed cases: least trainer time first, newcomers at the floor, backoff."""

from __future__ import annotations

from policyopt.workers.train.scheduler import FairScheduler, retry_delay


def test_the_least_served_ready_run_goes_first_and_ties_go_by_run_id() -> None:
    scheduler = FairScheduler()
    assert scheduler.order(["b", "a"], now=0) == ["a", "b"]  # both new at 0: by id
    scheduler.charge("a", 3.0)
    assert scheduler.pick(["a", "b"], now=0) == "b"  # a=3, b=0
    scheduler.charge("b", 1.0)
    assert scheduler.pick(["a", "b"], now=0) == "b"  # a=3, b=1
    scheduler.charge("b", 1.0)
    scheduler.charge("b", 1.0)
    assert scheduler.order(["a", "b"], now=0) == ["a", "b"]  # a=3, b=3: tie


def test_an_expensive_run_gets_the_same_trainer_seconds_not_the_same_steps() -> None:
    scheduler = FairScheduler()
    steps = {"cheap": 0, "costly": 0}
    for _ in range(12):  # cheap steps take 1 s, costly 4 s: cheap trains 4 steps per costly step
        run_id = scheduler.pick(["cheap", "costly"], now=0)
        assert run_id is not None
        steps[run_id] += 1
        scheduler.charge(run_id, 1.0 if run_id == "cheap" else 4.0)
    # virtual times after each pick (ties by id): cheap 1, costly 4, cheap 2..5, costly 8, cheap 6..9, costly 12
    assert steps == {"cheap": 9, "costly": 3}


def test_a_new_run_starts_at_the_least_virtual_time_of_the_runs_that_stayed_ready() -> None:
    scheduler = FairScheduler()
    scheduler.order(["a", "b"], now=0)
    scheduler.charge("a", 5.0)
    scheduler.charge("b", 7.0)
    assert scheduler.order(["a", "b", "c"], now=0) == ["a", "c", "b"]  # floor 5: c starts at 5
    assert scheduler.virtual_time["c"] == 5.0 and scheduler.floor == 5.0


def test_a_run_waking_from_a_wait_keeps_no_credit_beyond_the_floor() -> None:
    scheduler = FairScheduler()
    scheduler.order(["a", "b"], now=0)
    scheduler.charge("a", 1.0)
    scheduler.charge("b", 1.0)
    for _ in range(2):  # b waits for groups while a trains 2 s more
        scheduler.order(["a"], now=0)
        scheduler.charge("a", 1.0)
    assert scheduler.order(["a", "b"], now=0) == ["a", "b"]  # b lifted from 1 to a's 3, not ahead of it
    assert scheduler.virtual_time == {"a": 3.0, "b": 3.0}


def test_a_run_backing_off_is_not_eligible_until_its_retry_time() -> None:
    scheduler = FairScheduler()
    scheduler.back_off("a", until=10.0)
    assert scheduler.order(["a", "b"], now=5.0) == ["b"]
    assert scheduler.order(["a", "b"], now=10.0) == ["a", "b"]
    scheduler.back_off("a", until=20.0)
    scheduler.clear_backoff("a")
    assert scheduler.pick(["a"], now=11.0) == "a"


def test_retry_delay_doubles_up_to_its_cap() -> None:
    assert [retry_delay(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(10, 5.0) == 300.0
    assert retry_delay(3, 0.0) == 0.0
