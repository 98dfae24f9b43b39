"""The dashboard over real HTTP: a real server on a free port with its real app, and a real Valkey."""

from __future__ import annotations

import hashlib
import http.cookiejar
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from support.dashboard import (
    KEYS,
    dashboard_settings,
    emit_warning,
    run_with_steps,
    running_dashboard,
)

from policyopt.core.settings import Settings
from policyopt.core.types import Run
from policyopt.server.app import build_http_server
from policyopt.server.dashboard.app import CSP
from policyopt.server.dashboard.archive import CHUNK, tar_gz_chunks
from policyopt.state.runs import RunStore


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    """urllib with a cookie jar; redirects are returned, not followed, so tests see them."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> Reply:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with self._opener.open(self.base + path, data=body, timeout=30) as reply:
                return Reply(reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())

    def login(self, key: str) -> Reply:
        return self.request("/login", {"key": key})


@dataclass
class World:
    url: str
    settings: Settings
    r: redis.Redis
    run_a: Run
    run_b: Run


@pytest.fixture
def world(fresh_redis_url: str, fresh_redis: redis.Redis, tmp_path: Path) -> Iterator[World]:
    settings = dashboard_settings(fresh_redis_url, tmp_path)
    run_a = run_with_steps(fresh_redis, settings, "a", 3)
    run_b = run_with_steps(fresh_redis, settings, "b", 1)
    with running_dashboard(settings) as http:
        yield World(http.url, settings, fresh_redis, run_a, run_b)


def logged_in(world: World, tenant: str = "a") -> Browser:
    browser = Browser(world.url)
    reply = browser.login(KEYS[tenant])
    assert reply.status == 303 and reply.headers["location"] == "/"
    return browser


def test_login_with_a_wrong_key_is_the_login_page_with_a_message(world: World) -> None:
    browser = Browser(world.url)
    reply = browser.login("key-wrong")
    assert reply.status == 401
    assert "API key not recognised" in reply.text and 'name="key"' in reply.text
    assert not list(browser.cookies)
    assert browser.request("/").status == 303  # still not logged in


def test_login_sets_an_httponly_strict_cookie_and_logout_clears_it(world: World) -> None:
    browser = Browser(world.url)
    reply = browser.login(KEYS["a"])
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert browser.request("/").status == 200
    out = browser.request("/logout", {})
    assert out.status == 303 and out.headers["location"] == "/login"
    assert browser.request("/").headers["location"] == "/login"


def test_pages_and_api_need_a_login(world: World) -> None:
    browser = Browser(world.url)
    assert browser.request("/").headers["location"] == "/login"
    assert browser.request(f"/runs/{world.run_a.run_id}").status == 303
    assert browser.request("/api/runs").status == 401
    download = browser.request(f"/runs/{world.run_a.run_id}/versions/1/download")
    assert download.status == 303 and download.body == b""


def test_the_runs_list_shows_the_tenants_runs_only(world: World) -> None:
    page = logged_in(world, "a").request("/")
    assert page.status == 200
    assert world.run_a.run_id in page.text and world.run_b.run_id not in page.text
    api = json.loads(logged_in(world, "b").request("/api/runs").body)
    assert [r["run_id"] for r in api["runs"]] == [world.run_b.run_id]
    assert api["runs"][0]["step"] == 1 and api["runs"][0]["method"] == "grpo"


def test_another_tenants_run_is_404_exactly_like_an_unknown_run(world: World) -> None:
    browser = logged_in(world, "a")
    other = world.run_b.run_id
    unknown = "run-000000000000"
    for template in (
        "/runs/{}",
        "/api/runs/{}/events",
        "/api/runs/{}/versions",
        "/runs/{}/versions/1/download",
    ):
        theirs, nobodys = browser.request(template.format(other)), browser.request(template.format(unknown))
        assert theirs.status == nobodys.status == 404, template
        assert theirs.body == nobodys.body
        assert other.encode() not in theirs.body
    assert browser.request("/runs/not-a-run-id").status == 404


def test_the_download_holds_the_version_files_with_the_manifest_digests(world: World) -> None:
    browser = logged_in(world, "a")
    versions = json.loads(browser.request(f"/api/runs/{world.run_a.run_id}/versions").body)["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    files = versions[1]["files"]
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors"}
    reply = browser.request(f"/runs/{world.run_a.run_id}/versions/2/download")
    assert reply.status == 200 and reply.headers["content-type"] == "application/gzip"
    assert f"{world.run_a.run_id}-v2.tar.gz" in reply.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(reply.body), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    prefix = f"{world.run_a.run_id}-v2/"
    assert set(members) == {prefix + name for name in [*files, "manifest.json"]}
    for name, digest in files.items():
        assert hashlib.sha256(members[prefix + name]).hexdigest() == digest
    assert json.loads(members[prefix + "manifest.json"])["files"] == files
    assert browser.request(f"/runs/{world.run_a.run_id}/versions/9/download").status == 404


def test_events_api_pages_after_an_event_id_and_names_the_warnings_axis(world: World) -> None:
    browser = logged_in(world, "a")
    path = f"/api/runs/{world.run_a.run_id}/events"
    first = json.loads(browser.request(path).body)
    steps = [e for e in first["events"] if e["kind"] == "step"]
    assert [e["metrics"]["reward/mean"] for e in steps] == pytest.approx([0.1, 0.2, 0.3])
    assert first["run"]["status"] == "running" and first["run"]["version"] == 3
    message = emit_warning(world.r, world.run_a.run_id, step=3)
    later = json.loads(browser.request(f"{path}?after={first['last']}").body)
    assert len(later["events"]) == 1
    warning = later["events"][0]
    assert warning["kind"] == "warning" and warning["message"] == message
    assert warning["axis"] == "trajectory_side" and warning["name"] == "entropy_collapse"
    assert browser.request(f"{path}?after=not-an-id").status == 400


def test_user_text_is_escaped_in_pages(
    fresh_redis_url: str, fresh_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = dashboard_settings(fresh_redis_url, tmp_path)
    run = run_with_steps(fresh_redis, settings, "a", 0, base_model="<script>alert(1)</script>")
    with running_dashboard(settings) as http:
        browser = Browser(http.url)
        browser.login(KEYS["a"])
        for path in ("/", f"/runs/{run.run_id}"):
            page = browser.request(path).text
            assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_metrics_answer_without_a_key(world: World) -> None:
    reply = Browser(world.url).request("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert b"# HELP" in reply.body


def test_every_response_carries_a_self_only_csp(world: World) -> None:
    browser = logged_in(world, "a")
    for path in (
        "/login",
        "/",
        f"/runs/{world.run_a.run_id}",
        "/api/runs",
        "/static/dashboard.js",
        "/nowhere",
    ):
        headers = browser.request(path).headers
        assert headers["content-security-policy"] == CSP, path
        assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in CSP and "script-src 'self'" in CSP and "unsafe" not in CSP


def test_the_chart_library_is_served_from_the_package(world: World) -> None:
    browser = Browser(world.url)
    script = browser.request("/static/vendor/uPlot.iife.min.js")
    assert script.status == 200 and b"uPlot" in script.body
    page = logged_in(world, "a").request(f"/runs/{world.run_a.run_id}").text
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere


def test_errors_show_no_stack_trace(world: World) -> None:
    browser = logged_in(world, "a")
    world.r.hset(f"po:run:{world.run_a.run_id}", "data", "{not json")  # a record the app cannot read
    for path in (f"/runs/{world.run_a.run_id}", f"/api/runs/{world.run_a.run_id}/events"):
        reply = browser.request(path)
        assert reply.status == 500
        assert b"Traceback" not in reply.body and b"JSONDecodeError" not in reply.body


def test_with_auth_off_everyone_is_tenant_default_without_a_login(
    fresh_redis_url: str, fresh_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = dashboard_settings(fresh_redis_url, tmp_path, api_keys={})
    run = run_with_steps(fresh_redis, settings, "default", 1)
    with running_dashboard(settings) as http:
        browser = Browser(http.url)
        assert browser.request("/login").headers["location"] == "/"
        page = browser.request("/")
        assert page.status == 200 and run.run_id in page.text and "Log out" not in page.text


def test_http_port_minus_one_turns_http_off(
    fresh_redis_url: str, fresh_redis: redis.Redis, tmp_path: Path
) -> None:
    assert build_http_server(dashboard_settings(fresh_redis_url, tmp_path, http_port=-1), fresh_redis) is None
    assert RunStore(fresh_redis).list_runs("a") == []


@pytest.mark.slow
def test_serve_prints_the_dashboard_address_serves_it_and_stops_on_sigterm(
    valkey_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "REDIS_URL": valkey_url,
        "POLICYOPT_DATA_DIR": str(tmp_path),
        "POLICYOPT_API_KEYS": "t:k",
        "POLICYOPT_HTTP_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyopt.cli.main", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() if proc.stdout else "" for _ in range(2)]
        match = re.search(r"dashboard and /metrics on (http://\S+)", lines[1])
        assert match, f"no dashboard address in {lines!r}"
        browser = Browser(match.group(1))
        assert browser.request("/metrics").status == 200
        assert browser.login("k").status == 303 and browser.request("/").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_streamed_archive_is_a_valid_tar_gz_for_files_of_any_size(tmp_path: Path) -> None:
    sizes = {"empty": 0, "odd": 513, "large": 3 * CHUNK + 7}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    stream = b"".join(tar_gz_chunks(tmp_path, sorted(sizes), "run-v1"))
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:gz") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == {f"run-v1/{name}": (tmp_path / name).read_bytes() for name in sizes}
