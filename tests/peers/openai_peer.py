"""A local, scripted, fault-injecting OpenAI-compatible chat completions server.

A real HTTP/1.1 server on loopback (stdlib ``ThreadingHTTPServer``, one thread per
connection) serving ``POST /v1/chat/completions`` both ways the real API does:

* ``"stream": true``: ``text/event-stream`` over chunked transfer encoding, one
  ``data: {chat.completion.chunk}\\n\\n`` event per token and ``data: [DONE]\\n\\n`` at the end.
  Tool calls stream like the real API: a first delta carrying ``id``, ``type`` and
  ``function.name`` with empty ``arguments``, then the JSON arguments in small pieces, then
  ``finish_reason: "tool_calls"``.
* otherwise a single ``chat.completion`` JSON object.

Replies are chosen by :class:`Rule` (the first whose ``contains`` is a substring of the last
user message, case-insensitive), else ``default_reply`` (``"You said: {text}"``).

Behaviour knobs (attributes; :meth:`OpenAIPeer.set` changes them thread-safely while
running): ``headers_delay_s`` (delay before the response headers), ``ttft_s`` (delay
before the first token), ``token_delay_s``, ``stall_next`` /
``stall_s`` (the next N requests send headers, then nothing for ``stall_s`` seconds, then
carry on), ``fail_next`` (the next N requests get HTTP 500 with an OpenAI-style error body).

Records: :attr:`OpenAIPeer.requests` (the parsed JSON bodies, in arrival order) and
:attr:`OpenAIPeer.headers`.

Standalone: ``python -m tests.peers.openai_peer --port 8089`` (then
``OPENAI_BASE_URL=http://127.0.0.1:8089/v1``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, Sequence

__all__ = ["OpenAIPeer", "Rule"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """When the last user message contains ``contains``: say ``reply``, then call ``tool``."""

    contains: str
    reply: str = ""
    tool: str = ""  # e.g. "save_lead"
    arguments: Mapping[str, Any] = field(default_factory=dict)


class OpenAIPeer:
    """``with OpenAIPeer(rules=[...]) as peer: peer.base_url``."""

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_reply: str = "You said: {text}",
        ttft_s: float = 0.0,
        token_delay_s: float = 0.0,
    ) -> None:
        self.rules = list(rules)
        self.host = host
        self.port = port
        self.default_reply = default_reply
        self.ttft_s = ttft_s
        self.token_delay_s = token_delay_s
        self.headers_delay_s = 0.0
        self.stall_next = 0
        self.stall_s = 0.0
        self.fail_next = 0
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "OpenAIPeer":
        peer = self

        class Handler(_Handler):
            owner = peer

        server = _Server((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-peer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OpenAIPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set(self, **changes: Any) -> None:
        """Change knobs by name while running, e.g. ``set(stall_next=1, stall_s=5)``."""
        with self.lock:
            for key, value in changes.items():
                if key not in ("rules", "default_reply", "headers_delay_s", "ttft_s", "token_delay_s", "stall_next", "stall_s", "fail_next"):
                    raise AttributeError(f"OpenAIPeer has no knob {key!r}")
                setattr(self, key, value)

    # ------------------------------------------------------------------ behaviour

    def _take(self) -> dict[str, Any]:
        """Snapshot the knobs for one request and consume the one-shot faults."""
        with self.lock:
            self._counter += 1
            plan = {
                "n": self._counter,
                "fail": self.fail_next > 0,
                "stall": self.stall_s if self.stall_next > 0 else 0.0,
                "ttft": self.ttft_s,
                "headers_delay": self.headers_delay_s,
                "delay": self.token_delay_s,
                "rules": list(self.rules),
                "default": self.default_reply,
            }
            if self.fail_next > 0:
                self.fail_next -= 1
            elif self.stall_next > 0:
                self.stall_next -= 1
        return plan

    @staticmethod
    def choose(rules: Sequence[Rule], default: str, messages: Sequence[Mapping[str, Any]]) -> Rule:
        last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = last.get("content") or ""
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        for rule in rules:
            if rule.contains.lower() in content.lower():
                return rule
        return Rule(contains="", reply=default.replace("{text}", content))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gives up on a stalled reply resets its kept-alive connection: that is
        the behaviour under test, not a server error (stdlib would print a traceback)."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIPeer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("openai peer: " + format, *args)

    def _json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("messages must be a list")
        except ValueError as exc:
            self._json(400, {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}})
            return
        peer = self.owner
        with peer.lock:
            peer.requests.append(body)
            peer.headers.append({k.lower(): v for k, v in self.headers.items()})
        plan = peer._take()
        if plan["fail"]:
            self._json(500, {"error": {"message": "The server had an error (injected).", "type": "server_error"}})
            return
        rule = OpenAIPeer.choose(plan["rules"], plan["default"], body["messages"])
        model = str(body.get("model", "gpt-4o-mini"))
        time.sleep(plan["headers_delay"])
        cid = f"chatcmpl-peer{plan['n']}"
        try:
            if body.get("stream"):
                self._stream(rule, plan, model, cid)
            else:
                time.sleep(plan["ttft"])
                self._json(200, _completion(rule, model, cid))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a timeout or a cancel)

    def _stream(self, rule: Rule, plan: Mapping[str, Any], model: str, cid: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if plan["stall"]:
            time.sleep(plan["stall"])
        time.sleep(plan["ttft"])
        created = int(time.time())

        def event(delta: Mapping[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

        event({"role": "assistant", "content": ""})
        for token in re.findall(r"\S+\s*", rule.reply):
            event({"content": token})
            if plan["delay"]:
                time.sleep(plan["delay"])
        if rule.tool:
            args = json.dumps(dict(rule.arguments), ensure_ascii=False)
            event({"tool_calls": [{"index": 0, "id": f"call_{cid[-6:]}", "type": "function",
                                   "function": {"name": rule.tool, "arguments": ""}}]})
            for i in range(0, len(args), 7):
                event({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]})
                if plan["delay"]:
                    time.sleep(plan["delay"])
            event({}, "tool_calls")
        else:
            event({}, "stop")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _completion(rule: Rule, model: str, cid: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": rule.reply or None}
    finish = "stop"
    if rule.tool:
        message["tool_calls"] = [{"id": f"call_{cid[-6:]}", "type": "function",
                                  "function": {"name": rule.tool, "arguments": json.dumps(dict(rule.arguments))}}]
        finish = "tool_calls"
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible chat completions peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--ttft", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    peer = OpenAIPeer(host=args.host, port=args.port, ttft_s=args.ttft, token_delay_s=args.token_delay).start()
    log.info("openai peer listening on %s", peer.base_url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        peer.stop()


if __name__ == "__main__":
    main()
