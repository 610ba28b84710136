"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

Answers are deterministic: a request goes to the first `Rule` whose `contains` text occurs in its
messages; the rule's steps are served in order (the last one repeats), so "fail twice with 500, then
answer" is `Rule("Ada", [Fail(500), Fail(500), Reply("...")])`. Requests no rule matches go to
`default` (a function of the request), else get a 404. Steps: a reply (optionally slow), an HTTP error
(optionally with Retry-After), malformed JSON, a dropped connection, a stream cut off part-way.
A request with `"stream": true` gets its reply as server-sent events, one word per event, then a usage
event and `[DONE]`. Token usage: one token per whitespace-separated word (prompt: all messages).

    with ScriptedLLM([Rule("hello", [Reply("hi there")])]) as llm:
        env["LLM_API_BASE"] = llm.base_url
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    content: str
    # Seconds to wait before answering (a slow model; longer than the client's timeout = a timeout).
    delay: float = 0.0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Fail:
    status: int
    retry_after: str | None = None
    message: str = "scripted failure"


@dataclass(frozen=True)
class Malformed:
    """A 200 whose body is not a completion."""

    body: str = '{"choices": [{"message": {"content": "unterminated'


@dataclass(frozen=True)
class Disconnect:
    """Close the connection without answering."""


@dataclass(frozen=True)
class CutStream:
    """Stream the first `events` words of `content`, then close without [DONE]."""

    content: str
    events: int = 1


Step = Reply | Fail | Malformed | Disconnect | CutStream
# A step may also be a function of the request (an answer computed from its content).
Scripted = Step | Callable[["Request"], Step]


@dataclass
class Rule:
    contains: str
    steps: Sequence[Scripted]
    served: int = 0

    def next_step(self) -> Scripted:
        step = self.steps[min(self.served, len(self.steps) - 1)]
        self.served += 1
        return step


@dataclass(frozen=True)
class Request:
    body: dict[str, Any]
    text: str  # every message's content, joined by newlines
    headers: dict[str, str]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


def count_tokens(text: str) -> int:
    return len(text.split())


@dataclass
class ScriptedLLM:
    rules: list[Rule] = field(default_factory=list)
    default: Callable[[Request], Step] | None = None
    model: str = "scripted-model"
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---
    def start(self) -> ScriptedLLM:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="scripted-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def env(self) -> dict[str, str]:
        return {"LLM_API_BASE": self.base_url, "LLM_MODEL": self.model, "LLM_API_KEY": "test-key"}

    # --- script ---
    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def calls(self, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if contains in r.text)

    def _choose(self, request: Request) -> Step | None:
        with self._lock:
            self.requests.append(request)
            chosen: Scripted | None = None
            for rule in self.rules:
                if rule.contains in request.text:
                    chosen = rule.next_step()
                    break
        if chosen is None:
            chosen = self.default
        return chosen(request) if callable(chosen) else chosen


def _handler(llm: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_POST(self) -> None:
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
                messages = body["messages"]
                text = "\n".join(str(m.get("content", "")) for m in messages)
            except (ValueError, KeyError, TypeError, AttributeError):
                self._json(400, {"error": {"message": "request is not a chat completion"}})
                return
            request = Request(body=body, text=text, headers={k.lower(): v for k, v in self.headers.items()})
            step = llm._choose(request)
            if step is None:
                self._json(404, {"error": {"message": "no scripted answer for this request"}})
            elif isinstance(step, Fail):
                headers = {"Retry-After": step.retry_after} if step.retry_after is not None else {}
                self._json(step.status, {"error": {"message": step.message}}, headers)
            elif isinstance(step, Malformed):
                self._raw(200, step.body.encode(), "application/json")
            elif isinstance(step, Disconnect):
                self._drop()
            elif isinstance(step, CutStream):
                self._stream(request, step.content, step.events, "stop")
            else:
                if step.delay:
                    time.sleep(step.delay)
                if request.stream:
                    self._stream(request, step.content, None, step.finish_reason)
                else:
                    self._json(200, _completion(llm.model, request, step))

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            self._raw(status, json.dumps(payload).encode(), "application/json", headers)

        def _raw(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing to answer

        def _drop(self) -> None:
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _stream(self, request: Request, content: str, cut_after: int | None, finish: str) -> None:
            words = content.split(" ")
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for index, word in enumerate(words):
                    if cut_after is not None and index >= cut_after:
                        self.wfile.flush()
                        self._drop()
                        return
                    piece = word if index == 0 else " " + word
                    self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                self._event({"choices": [], "usage": _usage(request, content)})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _event(self, payload: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

    return Handler


def _usage(request: Request, content: str) -> dict[str, int]:
    prompt, completion = count_tokens(request.text), count_tokens(content)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(model: str, request: Request, step: Reply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": step.content}, "finish_reason": step.finish_reason}
        ],
        "usage": _usage(request, step.content),
    }


@contextmanager
def scripted_llm(rules: Sequence[Rule] = (), default: Callable[[Request], Step] | None = None) -> Iterator[ScriptedLLM]:
    with ScriptedLLM(list(rules), default) as llm:
        yield llm
