"""What ``policyopt proxy`` adds to a chat completion: the client's round trip minus the engine's own time.

    python bench/proxy_overhead.py [--engine transformers|vllm] [--sessions 8] [--turns 4] [--max-tokens 16]

Starts an embedded Valkey, the tiny model and the proxy in-process (``--engine vllm`` also a vLLM CPU
server, ``POLICYOPT_VLLM_PYTHON``), then runs ``sessions`` tool-calling conversations of ``turns`` calls
each with the official OpenAI client. Per call: round trip (client), engine time (the proxy's
``x-policyopt-engine-ms`` header: the engine's sample call alone), and their difference, the proxy's
overhead: HTTP + JSON, auth, the run lookup, chat-template rendering (twice on continued conversations),
tool-call parsing and recording the call in Redis. Prints medians and p90s with the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import redis
import torch

from policyopt.core.settings import Settings
from policyopt.core.types import RunConfig
from policyopt.core.valkey import EmbeddedValkey
from policyopt.models import build_tiny_model
from policyopt.state.runs import RunStore
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.proxy import Proxy

KEY = "bench-key"
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


@contextlib.contextmanager
def vllm_urls(engine: str, model_dir: Path, work: Path) -> Iterator[tuple[str, ...]]:
    if engine != "vllm":
        yield ()
        return
    with VLLMServer(model_dir, served_name="tiny", max_loras=2, log_path=work / "vllm.log") as server:
        yield (server.url,)


def conversation(llm: openai.OpenAI, session: str, turns: int, max_tokens: int) -> list[tuple[float, float]]:
    """(round trip s, engine s) of each call of one conversation."""
    messages: list[Any] = [{"role": "user", "content": "What is 2 plus 3? Use the add tool."}]
    timings = []
    for _ in range(turns):
        started = time.perf_counter()
        raw = llm.chat.completions.with_raw_response.create(
            model="run", messages=messages, tools=TOOLS, user=session, max_tokens=max_tokens
        )
        round_trip = time.perf_counter() - started
        reply = raw.parse()
        timings.append((round_trip, float(raw.headers["x-policyopt-engine-ms"]) / 1000))
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "user", "content": "Go on."})
    return timings


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{name:<22} median {statistics.median(values) * 1000:8.2f} ms   p90 {p90 * 1000:8.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny")
        with (
            EmbeddedValkey(work / "valkey", appendonly=False) as valkey,
            vllm_urls(args.engine, model_dir, work) as urls,
        ):
            r = redis.Redis.from_url(valkey.url)
            run = RunStore(r).create_run("bench", RunConfig(base_model=str(model_dir), max_new_tokens=64))
            settings = Settings(
                redis_url=valkey.url, api_keys={KEY: "bench"}, data_dir=str(work / "data"), device="cpu",
                dtype="float32", torch_threads=1, model_roots=(str(work),), vllm_urls=urls,
            )  # fmt: skip
            with Proxy(settings, run.run_id, engine=args.engine, port=0, redis_client=r) as proxy:
                llm = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0, timeout=120)
                conversation(llm, "warm-up", 2, args.max_tokens)
                timings = [
                    t
                    for s in range(args.sessions)
                    for t in conversation(llm, f"s{s}", args.turns, args.max_tokens)
                ]
    round_trips, engine = [t[0] for t in timings], [t[1] for t in timings]
    overhead = [rt - e for rt, e in timings]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"proxy overhead, {args.engine} engine, tiny model: {len(timings)} calls "
          f"({args.sessions} sessions x {args.turns} turns, max_tokens {args.max_tokens}); load {load}")  # fmt: skip
    print(summary("round trip (client)", round_trips))
    print(summary("engine (sample call)", engine))
    print(summary("proxy overhead", overhead))


if __name__ == "__main__":
    main()
