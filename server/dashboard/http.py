"""The dashboard's HTTP port: ``core.http_server`` (shared with ``policyopt proxy``)."""

from __future__ import annotations

from policyopt.core.http_server import HttpServer, bind

__all__ = ["HttpServer", "bind"]
