"""``Client`` and ``AsyncClient`` (and their run handles) offer the same methods, documented once."""

from __future__ import annotations

import inspect

import pytest

from policyopt.client import AsyncClient, AsyncRunHandle, Client, RunHandle, _calls

PAIRS = [(Client, AsyncClient), (RunHandle, AsyncRunHandle)]


def _public(cls: type) -> dict[str, object]:
    return {name: member for name, member in vars(cls).items() if not name.startswith("_")}


def _parameters(member: object) -> list[tuple[str, object, object]]:
    function = member.fget if isinstance(member, property) else member
    assert callable(function)
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize(("blocking", "asyncio"), PAIRS, ids=["Client", "RunHandle"])
def test_both_clients_have_the_same_public_methods_with_the_same_parameters(
    blocking: type, asyncio: type
) -> None:
    assert sorted(_public(blocking)) == sorted(_public(asyncio))
    for name, member in _public(blocking).items():
        assert _parameters(member) == _parameters(_public(asyncio)[name]), name


@pytest.mark.parametrize(("blocking", "asyncio"), PAIRS, ids=["Client", "RunHandle"])
def test_every_public_method_has_one_docstring_shared_by_both_clients(blocking: type, asyncio: type) -> None:
    for name, member in _public(blocking).items():
        doc = inspect.getdoc(member)
        assert doc, f"{blocking.__name__}.{name} has no docstring"
        assert doc == inspect.getdoc(getattr(asyncio, name)), name


def test_help_shows_the_calls_docstring_on_both_clients() -> None:
    assert Client.get_run.__doc__ == AsyncClient.get_run.__doc__ == _calls.get_run.__doc__
    assert "NotFound" in (Client.get_run.__doc__ or "")
    assert Client.submit_trajectories.__doc__ == AsyncClient.submit_trajectories.__doc__
    assert "agentic" in (AsyncClient.submit_trajectories.__doc__ or "")


def test_async_methods_stay_coroutines_and_watches_stay_async_iterators() -> None:
    for name in ("get_run", "create_run", "pull_adapter", "wait_for_version", "close"):
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    assert inspect.iscoroutinefunction(AsyncRunHandle.status)
    assert isinstance(RunHandle.status, property)
