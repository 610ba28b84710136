"""Token accounting: every call's usage, totalled per purpose in the process and exported to Prometheus."""

from __future__ import annotations

import threading
from collections import defaultdict

from aperag import metrics
from aperag.llm.types import Usage


class TokenMeter:
    """Calls and tokens per purpose since the meter was made (thread-safe). The Prometheus counters
    carry the same figures across processes; this is what a caller reads for one run (a benchmark,
    one document's extraction)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = defaultdict(Usage)
        self._calls: dict[str, int] = defaultdict(int)

    def record(self, purpose: str, usage: Usage) -> None:
        with self._lock:
            self._usage[purpose] = self._usage[purpose] + usage
            self._calls[purpose] += 1
        metrics.LLM_TOKENS.labels(purpose, "prompt").inc(usage.prompt_tokens)
        metrics.LLM_TOKENS.labels(purpose, "completion").inc(usage.completion_tokens)

    def usage(self, purpose: str | None = None) -> Usage:
        with self._lock:
            if purpose is not None:
                return self._usage.get(purpose, Usage())
            total = Usage()
            for usage in self._usage.values():
                total = total + usage
            return total

    def calls(self, purpose: str | None = None) -> int:
        with self._lock:
            return self._calls.get(purpose, 0) if purpose is not None else sum(self._calls.values())
