"""The dashboard's run page shows SAMPLE events: the events API carries each sample's text, reward and
components, and the page has the panel the browser code fills (with textContent only)."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.parse
import urllib.request
from pathlib import Path

import redis
from support.dashboard import KEYS, dashboard_settings, run_with_steps, running_dashboard

from policyopt.core.types import CompletionSample, EventKind, RunEvent
from policyopt.state.runs import RunStore


def test_sample_events_reach_the_events_api_and_the_page_has_their_panel(
    fresh_redis_url: str, fresh_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = dashboard_settings(fresh_redis_url, tmp_path)
    run = run_with_steps(fresh_redis, settings, "a", 1)
    sample = CompletionSample(
        "What is 2+3?", "<b>5</b> <script>x</script>", 1.5, {"correct": 1.0, "format": 1.0}
    )
    RunStore(fresh_redis).add_event(
        RunEvent(run_id=run.run_id, kind=EventKind.SAMPLE, step=1, version=1, samples=[sample])
    )
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with running_dashboard(settings) as server:
        base = server.url.rstrip("/")

        def get(path: str, data: dict[str, str] | None = None) -> str:
            body = urllib.parse.urlencode(data).encode() if data is not None else None
            with opener.open(base + path, data=body, timeout=30) as reply:
                return reply.read().decode()

        get("/login", {"key": KEYS["a"]})  # the redirect is followed, with the session cookie
        page = get(f"/runs/{run.run_id}")
        events = json.loads(get(f"/api/runs/{run.run_id}/events"))["events"]
        script = get("/static/dashboard.js")
    assert 'id="samples"' in page
    shown = [e for e in events if e["kind"] == "sample"]
    assert shown[0]["samples"] == [
        {"prompt": "What is 2+3?", "completion": "<b>5</b> <script>x</script>", "reward": 1.5,
         "components": {"correct": 1.0, "format": 1.0}}
    ]  # fmt: skip
    assert "addSamples" in script and "innerHTML" not in script
