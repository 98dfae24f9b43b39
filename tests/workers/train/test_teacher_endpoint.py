"""A teacher endpoint's reply never reaches the tenant: its error body stays in the trainer's log, and the
run's error and events carry the service's own reason."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
from support.trainer import TrainerEnv

from policyopt.core.types import MethodChoice, RunStatus, TeacherConfig
from policyopt.state.runs import RunStore
from policyopt.workers.train.session import build_updater
from policyopt.workers.train.worker import MAX_UPDATE_FAILURES

SECRET = "SECRET-TEACHER-BODY token=abc123"


class _SecretTeacher(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"error": {"message": SECRET}}).encode()
        self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def secret_teacher() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SecretTeacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
