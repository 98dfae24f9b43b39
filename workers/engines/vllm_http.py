"""A small HTTP client for one vLLM OpenAI-compatible server: completions, models, LoRA admin.

Standard library only (``urllib``), so the service needs no HTTP dependency and never imports vLLM.
This is the one place that maps transport and HTTP failures to our errors:

- connection refused, reset or timed out, and HTTP 5xx -> ``Unavailable``
- HTTP 404 (unknown model or LoRA name)                  -> ``NotFound``
- HTTP 400 and other 4xx                                  -> ``InvalidArgument``

The server must run with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` for the
``load_lora_adapter`` / ``unload_lora_adapter`` endpoints to exist.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from policyopt.core.errors import InvalidArgument, NotFound, PolicyOptError, Unavailable

JSONObject = dict[str, Any]

ALREADY_LOADED = "has already been loaded"
"""Substring of vLLM's 400 reply when a LoRA name is taken."""


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``/v1/models``: the base model (``parent`` None) or a loaded LoRA adapter."""

    name: str
    root: str
    parent: str | None
    max_model_len: int | None = None


class VLLMClient:
    """Blocking calls to one vLLM server at ``base_url`` (``http://host:port``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 600.0,
        admin_timeout_s: float = 60.0,
        opener: urllib.request.OpenerDirector | None = None,
    ) -> None:
        """``opener``: how requests go out (``workers.pinned_http`` for a tenant's server); default urlopen."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.admin_timeout_s = admin_timeout_s
        self._open = opener.open if opener is not None else urllib.request.urlopen

    def __repr__(self) -> str:
        return f"VLLMClient({self.base_url!r})"

    # -- transport ------------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: JSONObject | None = None, timeout_s: float | None = None
    ) -> Any:
        """The decoded JSON (or text) reply; raises our errors for every failure."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with self._open(req, timeout=timeout_s or self.timeout_s) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(self.base_url, path, exc.code, exc.read()) from exc
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            raise Unavailable(f"vLLM at {self.base_url} is unreachable ({path}): {exc}") from exc
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    # -- endpoints ------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """True when ``/health`` answers 200."""
        try:
            self.request("GET", "/health", timeout_s=5.0)
        except PolicyOptError:
            return False
        return True

    def wait_healthy(self, timeout_s: float, poll_s: float = 0.5) -> None:
        """Block until ``/health`` answers; Unavailable after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if time.monotonic() > deadline:
                raise Unavailable(f"vLLM at {self.base_url} did not become healthy within {timeout_s:.0f} s")
            time.sleep(poll_s)

    def models(self) -> list[ServedModel]:
        reply = self.request("GET", "/v1/models", timeout_s=self.admin_timeout_s)
        return [
            ServedModel(
                name=str(m["id"]),
                root=str(m.get("root") or ""),
                parent=m.get("parent"),
                max_model_len=m.get("max_model_len"),
            )
            for m in reply.get("data", [])
        ]

    def base_model(self) -> ServedModel:
        """The served base model (the entry without a parent)."""
        for model in self.models():
            if model.parent is None:
                return model
        raise Unavailable(f"vLLM at {self.base_url} lists no base model in /v1/models")

    def loaded_adapters(self) -> dict[str, str]:
        """LoRA name -> the path it was loaded from."""
        return {m.name: m.root for m in self.models() if m.parent is not None}

    def load_lora(self, name: str, path: str) -> None:
        """``POST /v1/load_lora_adapter``; InvalidArgument containing ``ALREADY_LOADED`` if the name is taken."""
        self.request(
            "POST",
            "/v1/load_lora_adapter",
            {"lora_name": name, "lora_path": path},
            timeout_s=self.admin_timeout_s,
        )

    def unload_lora(self, name: str) -> bool:
        """``POST /v1/unload_lora_adapter``; False when the name was not loaded."""
        try:
            self.request(
                "POST", "/v1/unload_lora_adapter", {"lora_name": name}, timeout_s=self.admin_timeout_s
            )
        except NotFound:
            return False
        return True

    def completions(self, body: JSONObject) -> JSONObject:
        reply: JSONObject = self.request("POST", "/v1/completions", body)
        return reply


def _http_error(base_url: str, path: str, status: int, payload: bytes) -> PolicyOptError:
    message = _error_message(payload)
    text = f"vLLM at {base_url} answered {status} to {path}: {message}"
    if status == 404:
        return NotFound(text)
    if 400 <= status < 500:
        return InvalidArgument(text)
    return Unavailable(text)


def _error_message(payload: bytes) -> str:
    try:
        data = json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")[:500]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


__all__ = ["ALREADY_LOADED", "ServedModel", "VLLMClient"]
