"""The MCP server at /mcp, through the MCP SDK's own client over real HTTP (Streamable HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.app.chat_stack import AUTH, Stack, llm, stack

__all__ = ["llm", "stack"]

Connect = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture(params=["auto", "legacy"])
def connect(stack: Stack, request: pytest.FixtureRequest) -> Connect:
    """A connected client: 'auto' negotiates the newest protocol, 'legacy' the initialize handshake that
    older clients use."""

    @asynccontextmanager
    async def open_client(headers: dict[str, str] = AUTH, statuses: list[int] | None = None) -> AsyncIterator[Client]:
        async def record(response: httpx2.Response) -> None:
            if statuses is not None:
                statuses.append(response.status_code)

        async with (
            httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [record]}) as http,
            Client(streamable_http_client(stack.url + "/mcp", http_client=http), mode=request.param) as client,
        ):
            yield client

    return open_client


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = result.structured_content
    return data


async def test_tools_are_listed_with_their_schemas(connect: Connect) -> None:
    async with connect() as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"list_collections", "search", "fetch_chunk"}
    assert tools["search"].input_schema["required"] == ["collection", "query"]
    assert tools["search"].input_schema["properties"]["mode"]["enum"] == ["vector", "fulltext", "hybrid", "graph"]


async def test_list_search_and_fetch(stack: Stack, connect: Connect) -> None:
    async with connect() as client:
        listed = structured(await client.call_tool("list_collections", {}))
        kb = next(c for c in listed["collections"] if c["name"] == "kb")
        assert kb["documents"] == {"ready": len(stack.ids)}
        for mode in ("vector", "fulltext", "hybrid"):
            found = structured(await client.call_tool("search", {"collection": kb["id"], "query": "sourdough starter",
                                                                 "mode": mode, "top_k": 2}))  # fmt: skip
            assert found["mode"] == mode and found["collection"] == "kb" and len(found["results"]) <= 2
            assert found["results"][0]["document_id"] == stack.ids["sourdough.txt"], mode
        # The graph modes are accepted (what they find depends on the graph built for the collection).
        for arguments in ({"mode": "graph"}, {"mode": "hybrid", "include_graph": True}):
            structured(await client.call_tool("search", {"collection": "kb", "query": "sourdough", **arguments}))
        hit = found["results"][0]
        chunk = structured(await client.call_tool("fetch_chunk", {"collection": "kb", "chunk_id": hit["chunk_id"]}))
        assert chunk["text"] == hit["text"] and chunk["document_id"] == hit["document_id"]
        again = structured(await client.call_tool(
            "fetch_chunk", {"collection": "kb", "document_id": chunk["document_id"], "ordinal": chunk["ordinal"]}
        ))  # fmt: skip
        assert again == chunk and 0 <= chunk["ordinal"] < chunk["chunks_in_document"]


async def test_tool_errors_are_clear(connect: Connect) -> None:
    async with connect() as client:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("search", {"collection": "missing", "query": "x"}, "not found"),
            ("search", {"collection": "kb", "query": "?!"}, "letter or digit"),
            ("search", {"collection": "kb", "query": "x", "mode": "semantic"}, "mode"),
            ("search", {"collection": "kb", "query": "x", "top_k": 0}, "top_k"),
            ("fetch_chunk", {"collection": "kb"}, "chunk_id"),
            ("fetch_chunk", {"collection": "kb", "chunk_id": "00000000-0000-0000-0000-000000000000"}, "not found"),
            ("fetch_chunk", {"collection": "kb", "document_id": "x" * 32, "ordinal": 0}, "not found"),
        ]
        for tool, arguments, words in cases:
            result = await client.call_tool(tool, arguments)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            assert result.is_error and words in text, (tool, arguments, text)


async def test_a_client_without_the_key_is_refused(connect: Connect) -> None:
    statuses: list[int] = []
    # The SDK reports the refusal as its own error (an MCPError in an exception group), without the status.
    with pytest.raises(Exception):  # noqa: B017
        async with connect(headers={"Authorization": "Bearer wrong"}, statuses=statuses) as client:
            await client.list_tools()
    assert statuses and set(statuses) == {401}, statuses
