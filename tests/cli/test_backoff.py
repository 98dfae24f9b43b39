"""The restart delays of a supervised child, and how its exits are described in the log."""

from __future__ import annotations

import signal

from policyopt.cli.supervision import Backoff, describe_exit


def test_restart_delays_double_up_to_the_cap_and_reset_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, stable_s=60.0)
    assert [backoff.after_exit(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.after_exit(60.0) == 0.5  # it stayed up a minute: a fresh start
    assert backoff.after_exit(1.0) == 1.0


def test_exits_are_described_by_code_or_signal_name() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
