"""The dashboard's HTML: small server-rendered shells, every interpolated string escaped.

The browser code (``static/dashboard.js``) fills charts, warnings and versions from the JSON API and
writes text with ``textContent`` only; no page has an inline script or style (the CSP forbids them).
"""

from __future__ import annotations

import time
from html import escape

from policyopt.core.types import Run
from policyopt.server.dashboard.views import method_name


def _page(
    title: str, body: str, *, tenant: str | None = None, logout: bool = False, script: bool = False
) -> str:
    who = ""
    if tenant is not None:
        who = f'<span class="tenant">tenant <b>{escape(tenant)}</b></span>'
        if logout:
            who += '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
    scripts = (
        '<script src="/static/vendor/uPlot.iife.min.js"></script><script src="/static/dashboard.js"></script>'
        if script
        else ""
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · policyopt</title>"
        '<link rel="stylesheet" href="/static/vendor/uPlot.min.css">'
        '<link rel="stylesheet" href="/static/dashboard.css">'
        f'</head><body><header><a class="brand" href="/">policyopt</a><nav>{who}</nav></header>'
        f"<main>{body}</main>{scripts}</body></html>"
    )


def login_page(message: str = "") -> str:
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    return _page(
        "Log in",
        '<section class="login"><h1>Log in</h1>'
        "<p>Enter the API key you use with the gRPC API; you will see your tenant's runs.</p>"
        f"{note}"
        '<form method="post" action="/login">'
        '<label for="key">API key</label>'
        '<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">Log in</button></form></section>',
    )


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _steps(run: Run) -> str:
    return f"{run.step} / {run.config.max_steps}" if run.config.max_steps else str(run.step)


def runs_page(tenant: str, runs: list[Run], logout: bool) -> str:
    if not runs:
        table = '<p class="empty">No runs yet. Create one with <code>CreateRun</code>.</p>'
    else:
        rows = "".join(
            f'<tr><td><a href="/runs/{escape(r.run_id)}">{escape(r.run_id)}</a></td>'
            f'<td><span class="status status-{escape(r.status.value)}">{escape(r.status.value)}</span></td>'
            f"<td>{escape(method_name(r))}</td><td>{escape(r.config.base_model)}</td>"
            f'<td class="num">{escape(_steps(r))}</td><td class="num">v{r.version}</td>'
            f"<td>{escape(_when(r.created_at))}</td></tr>"
            for r in reversed(runs)
        )
        table = (
            '<table id="runs"><thead><tr><th>Run</th><th>Status</th><th>Method</th><th>Base model</th>'
            '<th class="num">Step</th><th class="num">Version</th><th>Created</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    return _page("Runs", f"<h1>Runs</h1>{table}", tenant=tenant, logout=logout)


def run_page(tenant: str, run: Run, logout: bool) -> str:
    rid = escape(run.run_id)
    facts = (
        f'<dl class="facts"><div><dt>Status</dt><dd id="run-status" class="status status-{escape(run.status.value)}">'
        f"{escape(run.status.value)}</dd></div>"
        f"<div><dt>Method</dt><dd>{escape(method_name(run))}</dd></div>"
        f"<div><dt>Base model</dt><dd>{escape(run.config.base_model)}</dd></div>"
        f'<div><dt>Step</dt><dd id="run-step">{escape(_steps(run))}</dd></div>'
        f'<div><dt>Version</dt><dd id="run-version">v{run.version}</dd></div></dl>'
    )
    body = (
        f'<p class="crumbs"><a href="/">Runs</a> / {rid}</p><h1>{rid}</h1>{facts}'
        f'<p id="run-error" class="error"{"" if run.error else " hidden"}>{escape(run.error)}</p>'
        '<section class="panel"><h2>Reward <span class="hint">mean per step</span>'
        '<span id="reward-latest" class="latest"></span></h2>'
        '<div id="reward-chart" class="chart chart-wide" data-metric="reward/mean" data-points="0"></div>'
        '<p id="reward-empty" class="empty">No step yet: the curve starts with the first committed step.</p>'
        "</section>"
        '<section class="panel"><h2>Diagnostic warnings</h2>'
        '<ul id="warnings" class="warnings"></ul><p id="warnings-empty" class="empty">None so far.</p></section>'
        '<section class="panel"><h2>Samples <span class="hint">what the model writes, every sample_every steps</span>'
        '</h2><div id="samples"></div><p id="samples-empty" class="empty">None yet.</p></section>'
        '<section class="panel"><h2>Reward side <span class="hint">what multiplies ∇log p</span></h2>'
        '<div id="axis-reward_side" class="grid"></div></section>'
        '<section class="panel"><h2>Trajectory side <span class="hint">how log p enters the loss</span></h2>'
        '<div id="axis-trajectory_side" class="grid"></div></section>'
        '<section class="panel"><h2>Trainer</h2><div id="axis-trainer" class="grid"></div></section>'
        '<section class="panel"><h2>Adapter versions</h2>'
        '<table id="versions"><thead><tr><th class="num">Version</th><th class="num">Step</th><th>Files (sha256)</th><th></th></tr>'
        '</thead><tbody></tbody></table><p id="versions-empty" class="empty">No version published yet.</p>'
        "</section>"
        '<p class="live"><span id="live" data-state="connecting">connecting…</span></p>'
        f'<div id="run" data-run-id="{rid}" hidden></div>'
    )
    return _page(run.run_id, body, tenant=tenant, logout=logout, script=True)


def not_found_page(tenant: str | None, logout: bool) -> str:
    return _page(
        "Not found",
        '<h1>Not found</h1><p>There is no such run or page. <a href="/">Back to your runs</a>.</p>',
        tenant=tenant,
        logout=logout,
    )


def error_page() -> str:
    return _page("Error", "<h1>Something went wrong</h1><p>The error is in the server's log.</p>")


__all__ = ["error_page", "login_page", "not_found_page", "run_page", "runs_page"]
