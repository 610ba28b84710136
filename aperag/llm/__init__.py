"""A client for an OpenAI-compatible chat endpoint (LLM_API_BASE, LLM_MODEL, LLM_API_KEY; docs/app.md).

from aperag.llm import ChatMessage, client_from_settings
client = client_from_settings(settings)          # NotConfigured without a model
answer = client.complete([ChatMessage("user", "Hi")], purpose="chat")
for delta in client.stream([...]): ...           # the last delta has done=True and the usage
"""

from __future__ import annotations

from aperag.config import Settings
from aperag.llm.accounting import TokenMeter
from aperag.llm.client import AsyncLLMClient, LLMClient, LLMConfig, config_from_settings
from aperag.llm.errors import LLMBadResponse, LLMError, LLMRequestRejected, LLMUnavailable, NotConfigured
from aperag.llm.protocol import RetryPolicy
from aperag.llm.types import ChatMessage, Completion, StreamDelta, Usage

__all__ = [
    "AsyncLLMClient",
    "ChatMessage",
    "Completion",
    "LLMBadResponse",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "LLMRequestRejected",
    "LLMUnavailable",
    "NotConfigured",
    "RetryPolicy",
    "StreamDelta",
    "TokenMeter",
    "Usage",
    "async_client_from_settings",
    "client_from_settings",
    "config_from_settings",
]


def client_from_settings(settings: Settings, meter: TokenMeter | None = None) -> LLMClient:
    """A blocking client for the configured endpoint; NotConfigured when there is none."""
    return LLMClient(config_from_settings(settings), meter=meter)


def async_client_from_settings(settings: Settings, meter: TokenMeter | None = None) -> AsyncLLMClient:
    """An asyncio client for the configured endpoint; NotConfigured when there is none."""
    return AsyncLLMClient(config_from_settings(settings), meter=meter)
