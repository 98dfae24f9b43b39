"""The run dashboard: a small Starlette app on the server's HTTP port, beside ``/metrics``.

``build_app`` (routes: ``app.py``) reads runs, events and adapter versions straight from Redis through the
``RunStore``; ``HttpServer`` runs it with uvicorn in a daemon thread. Pages are rendered with every user
string escaped (``pages.py``), the browser code sets text with ``textContent`` only, and a self-only
Content-Security-Policy keeps every script, style and chart library local (``static/vendor``: uPlot).
"""

from policyopt.server.dashboard.app import build_app
from policyopt.server.dashboard.http import HttpServer

__all__ = ["HttpServer", "build_app"]
