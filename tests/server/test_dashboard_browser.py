"""The dashboard in a real chromium (Playwright): log in, see the runs, read a run's curves as it trains.

Debian's chromium is launched by path (Playwright's own browser download is not used). Without it the test
skips, except in CI (``CI=true``), where it must run: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import redis
from support.dashboard import (
    KEYS,
    commit_step,
    dashboard_settings,
    emit_warning,
    run_with_steps,
    running_dashboard,
)

CHROMIUM = os.environ.get("POLICYOPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"chromium is missing at {CHROMIUM}; CI must run the browser test (apt-get install chromium)"
        )
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium, or set POLICYOPT_CHROMIUM)")


def keep_screenshot(png: bytes, tmp_path: Path, name: str = "dashboard.png") -> Path:
    """The screenshot under the test's tmp dir, and in the folder $POLICYOPT_TEST_ARTIFACTS when that is set.

    ``POLICYOPT_UPDATE_DOCS_SCREENSHOT=1`` also refreshes README's picture, docs/dashboard.png."""
    path = tmp_path / name
    path.write_bytes(png)
    artifacts = os.environ.get("POLICYOPT_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(artifacts) / name)
    if name == "dashboard.png" and os.environ.get("POLICYOPT_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(path, DOCS_SCREENSHOT)
    return path


@pytest.mark.slow
def test_a_person_logs_in_and_watches_a_run_train(
    fresh_redis_url: str, fresh_redis: redis.Redis, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_or_skip()
    settings = dashboard_settings(fresh_redis_url, tmp_path)
    mine = run_with_steps(fresh_redis, settings, "a", 5)
    theirs = run_with_steps(fresh_redis, settings, "b", 2)
    with running_dashboard(settings) as http, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda q: None if q.url.startswith(http.url) else problems.append(q.url))

            page.goto(http.url)
            expect(page).to_have_url(http.url + "login")
            page.fill("#key", "key-wrong")
            page.click("button[type=submit]")
            expect(page.locator(".error")).to_contain_text("API key not recognised")
            page.fill("#key", KEYS["a"])
            page.click("button[type=submit]")
            problems.clear()  # the refused login's 401 is logged as a failed load; from here on, nothing is

            runs = page.locator("#runs")
            expect(runs).to_contain_text(mine.run_id)
            assert theirs.run_id not in runs.inner_text()
            keep_screenshot(page.screenshot(), tmp_path, "dashboard-runs.png")

            page.click(f"a[href='/runs/{mine.run_id}']")
            reward = page.locator("#reward-chart")
            expect(reward).to_have_attribute("data-points", "5")
            expect(reward.locator("canvas")).to_have_count(1)
            expect(
                page.locator("#axis-trajectory_side .chart[data-metric='trajectory/loss']")
            ).to_have_attribute("data-points", "5")
            expect(page.locator("#versions tbody tr")).to_have_count(5)
            expect(page.locator("#warnings-empty")).to_be_visible()

            # While the page is open: the trainer commits a step and a diagnostic warning appears.
            commit_step(fresh_redis, settings, mine.run_id, 6)
            emit_warning(fresh_redis, mine.run_id, step=6)
            expect(reward).to_have_attribute("data-points", "6", timeout=15_000)
            warning = page.locator("#warnings .warning")
            expect(warning).to_have_count(1, timeout=15_000)
            expect(warning).to_have_attribute("data-axis", "trajectory_side")
            expect(warning.locator(".axis")).to_have_text("trajectory side")
            expect(warning.locator(".name")).to_have_text("entropy_collapse")
            expect(page.locator("#run-version")).to_have_text("v6")
            expect(page.locator("#versions tbody tr")).to_have_count(6)
            download = page.locator("#versions tbody tr").first.locator("a.download")
            expect(download).to_have_attribute("href", f"/runs/{mine.run_id}/versions/6/download")

            shot = keep_screenshot(page.screenshot(full_page=True), tmp_path)
            assert shot.stat().st_size > 10_000
            assert problems == []  # no script error, no CSP violation, no request elsewhere

            refused = page.goto(f"{http.url}runs/{theirs.run_id}")
            assert refused is not None and refused.status == 404
            expect(page.locator("h1")).to_have_text("Not found")
            assert theirs.run_id not in page.content()

            page.click("header button[type=submit]")  # log out
            expect(page).to_have_url(http.url + "login")
        finally:
            browser.close()
