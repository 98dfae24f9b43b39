"""``RewardServer``: host a Python reward function as a gRPC ``RewardService``.

The function may score one completion (``fn(prompt, completion, metadata) -> float``) or, with
``batch=True``, the whole group (``fn(prompt, completions, metadata) -> list[float]``), and either may
be ``async def``. A score may be a float or a dict of named components (``{"format": 1.0, "correct": 0.0}``):
the components are sent by name with ``weights`` (missing: 1.0) and the rollout worker makes the total
``sum(weight * value)`` and reports each component's mean as ``reward/component/<name>``. Scores are returned
as given: the rollout worker rejects NaN, wrong counts and bad components.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from types import TracebackType
from typing import TypeVar, cast

import grpc

from policyopt.client.structs import struct_to_dict
from policyopt.client.tls import PemSource, server_credentials
from policyopt.client.types import JSONValue
from policyopt.v1 import reward_pb2 as rpb
from policyopt.v1 import reward_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)

Metadata = dict[str, JSONValue]
Score = float | dict[str, float]
"""A completion's reward: the total, or named components the worker weighs into the total."""
ItemScore = Callable[[str, str, Metadata], Score] | Callable[[str, str, Metadata], Awaitable[Score]]
BatchScore = (
    Callable[[str, list[str], Metadata], Sequence[Score]]
    | Callable[[str, list[str], Metadata], Awaitable[Sequence[Score]]]
)
GroupScore = Callable[[str, list[str], Metadata], Sequence[Score] | Awaitable[Sequence[Score]]]
T = TypeVar("T")


def _is_async(fn: object) -> bool:
    call = type(fn).__call__ if callable(fn) and not inspect.isfunction(fn) else None
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


async def _settled(value: T | Awaitable[T]) -> T:
    return await value if isinstance(value, Awaitable) else value


def _returned(value: T | Awaitable[T]) -> T:
    if isinstance(value, Awaitable):
        raise TypeError("the reward function returned an awaitable; make it `async def`")
    return value


def _group_scorer(fn: ItemScore | BatchScore, batch: bool) -> GroupScore:
    """``fn`` as a function that scores a whole group, whichever form it has.

    ``batch`` is the caller's word for the form: a callable's parameter types cannot be checked at run time.
    """
    if batch:
        return cast(BatchScore, fn)
    score_one = cast(ItemScore, fn)

    async def score_each_async(prompt: str, completions: list[str], metadata: Metadata) -> list[Score]:
        scores = await asyncio.gather(*(_settled(score_one(prompt, c, metadata)) for c in completions))
        return [cast(Score, s) for s in scores]

    def score_each(prompt: str, completions: list[str], metadata: Metadata) -> list[Score]:
        return [cast(Score, _returned(score_one(prompt, c, metadata))) for c in completions]

    return score_each_async if _is_async(fn) else score_each


def _credentials(
    cert: PemSource | None, key: PemSource | None, client_ca: PemSource | None
) -> grpc.ServerCredentials | None:
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS first")
        return None
    if cert is None or key is None:
        raise ValueError("give both tls_cert and tls_key to serve TLS")
    return server_credentials(cert, key, client_ca)


def _response(scores: Sequence[Score], weights: dict[str, float]) -> rpb.ScoreResponse:
    """Floats as ``scores``; dicts as named ``components`` (every completion must name the same ones)."""
    if not any(isinstance(s, dict) for s in scores):
        return rpb.ScoreResponse(scores=[float(cast(float, s)) for s in scores])
    dicts = [s for s in scores if isinstance(s, dict)]
    names = list(dicts[0]) if dicts else []
    if len(dicts) != len(scores) or any(set(d) != set(names) for d in dicts):
        raise ValueError(
            "return a dict with the same component names for every completion, or floats for all"
        )
    components = [rpb.RewardComponent(name=n, values=[float(d[n]) for d in dicts]) for n in names]
    return rpb.ScoreResponse(components=components, weights=weights)


class _Scorer(rpb_grpc.RewardServiceServicer):
    def __init__(
        self, score: GroupScore, loop: asyncio.AbstractEventLoop | None, weights: dict[str, float]
    ) -> None:
        self.score = score
        self.loop = loop
        self.weights = weights

    async def _score_async(self, prompt: str, completions: list[str], metadata: Metadata) -> list[Score]:
        return list(await _settled(self.score(prompt, completions, metadata)))

    def _score(
        self, prompt: str, completions: list[str], metadata: Metadata, timeout: float | None
    ) -> list[Score]:
        if self.loop is not None:
            future = asyncio.run_coroutine_threadsafe(
                self._score_async(prompt, completions, metadata), self.loop
            )
            return future.result(timeout)
        return list(_returned(self.score(prompt, completions, metadata)))

    def Score(self, request: rpb.ScoreRequest, context: grpc.ServicerContext) -> rpb.ScoreResponse:
        completions = list(request.completions)
        try:
            scores = self._score(
                request.prompt, completions, struct_to_dict(request.metadata), context.time_remaining()
            )
            response = _response(scores, self.weights)
        except Exception as exc:
            log.exception("reward function failed on prompt %s", request.prompt_id)
            context.abort(grpc.StatusCode.INTERNAL, f"reward function raised {type(exc).__name__}: {exc}")
        if len(scores) != len(completions):
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"reward function returned {len(scores)} scores for {len(completions)} completions; return one each",
            )
        return response


class RewardServer:
    """A RewardService on ``host:port`` (port 0: a free one). ``address`` is what to register.

    With ``tls_cert`` and ``tls_key`` (paths, or PEM text) it serves TLS: register it with ``tls=True`` and
    the CA that signed ``tls_cert``. With ``tls_client_ca`` too, callers must present a certificate that CA
    signed. Use as a context manager, or ``start()``/``stop()``. ``weights`` weigh the named components
    a function returns as dicts (missing: 1.0).
    """

    def __init__(
        self,
        fn: ItemScore | BatchScore,
        *,
        batch: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        max_workers: int = 8,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        tls_client_ca: PemSource | None = None,
        weights: dict[str, float] | None = None,
    ) -> None:
        self.fn = fn
        self.weights = dict(weights or {})
        self.batch = batch
        self.host = host
        self.port = port
        self.max_workers = max_workers
        self._credentials = _credentials(tls_cert, tls_key, tls_client_ca)
        self._server: grpc.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=loop.run_forever, name="reward-server-loop", daemon=True)
        self._loop_thread.start()
        return loop

    def start(self) -> RewardServer:
        self._loop = self._start_loop() if _is_async(self.fn) else None
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="reward")
        )
        rpb_grpc.add_RewardServiceServicer_to_server(
            _Scorer(_group_scorer(self.fn, self.batch), self._loop, self.weights), server
        )
        address = f"{self.host}:{self.port}"
        if self._credentials is not None:
            self.port = server.add_secure_port(address, self._credentials)
        else:
            self.port = server.add_insecure_port(address)
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            loop.close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
