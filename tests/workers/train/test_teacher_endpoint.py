"""A teacher endpoint's reply never reaches the tenant: its error body stays in the trainer's log, and the
run's error and events carry the service's own reason."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.http import secret_http_server
from support.trainer import TrainerEnv

from policyopt.core.types import MethodChoice, RunStatus, TeacherConfig
from policyopt.state.runs import RunStore
from policyopt.workers.train.session import build_updater
from policyopt.workers.train.worker import MAX_UPDATE_FAILURES

SECRET = "SECRET-TEACHER-BODY token=abc123"


@pytest.fixture
def secret_teacher() -> Iterator[str]:
    with secret_http_server(400, json.dumps({"error": {"message": SECRET}}).encode()) as server:
        yield server.url


def test_a_teacher_endpoints_error_body_never_reaches_the_run(
    trainer_env: TrainerEnv, secret_teacher: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = trainer_env.create_run(
        method=MethodChoice("opd"), teacher=TeacherConfig(model="teacher", endpoint=secret_teacher, coef=1.0)
    )
    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker(updater_factory=build_updater)
    for _ in range(MAX_UPDATE_FAILURES):
        assert not worker._train_guarded(run.run_id)
    store = RunStore(trainer_env.r)
    failed = store.get_run(run.run_id)
    events = [e.message for e in store.read_events(run.run_id)]
    assert failed.status == RunStatus.FAILED
    assert "teacher endpoint" in failed.error and "could not score" in failed.error
    assert all("SECRET" not in text and "abc123" not in text for text in [failed.error, *events])
    assert SECRET in caplog.text  # the operator's log keeps the detail
