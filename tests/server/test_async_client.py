"""AsyncClient makes the same calls as Client, and maps errors to the same exceptions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from policyopt.client import AsyncClient, EventKind, NotFound, RewardServer, RunStatus, Unauthenticated


def test_async_client_creates_submits_watches_and_cancels(
    server, tiny_model_dir: Path, reward_endpoint: RewardServer
) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.address, api_key=server.keys["a"]) as client:
            await client.register_reward_endpoint("ones", reward_endpoint.address)
            run = await client.create_run(str(tiny_model_dir), reward_endpoint="ones", group_size=2)
            assert len(await run.submit_prompts(["What is 1 + 1?"], metadata=[{"answer": 2}])) == 1
            assert run.run_id in [r.run_id for r in await client.list_runs()]
            await run.cancel()
            kinds = [event.kind async for event in run.watch()]
            assert kinds == [EventKind.STATUS, EventKind.STATUS]
            assert await run.status() == RunStatus.CANCELLED
            with pytest.raises(NotFound):
                await client.get_run("run-missing")

    asyncio.run(scenario())


def test_async_client_without_a_key_is_unauthenticated(server) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.address, api_key="") as client:
            with pytest.raises(Unauthenticated):
                await client.list_runs()

    asyncio.run(scenario())
