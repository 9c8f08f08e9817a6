"""The media WebSocket's vocabulary: its states, RFC 6455 close codes, timeouts, server text frames.

Both ways of running the media socket (over an ASGI server, or owning the TCP
connection) share these, and the host names them when it refuses or closes a
call; keeping them here, free of any I/O, lets the wire layer and tests use
them without importing trio or wsproto.
"""

from __future__ import annotations

import enum

__all__ = [
    "SEND_TIMEOUT_S",
    "CLOSE_WAIT_S",
    "SocketState",
    "text_frame",
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_ABNORMAL",
]

#: How long one outbound message may take before the peer counts as gone. The
#: kernel buffers well over 100 kB per socket and outbound media is ~12.5 kB/s,
#: so a write that blocks at all means the peer is seconds behind already.
SEND_TIMEOUT_S = 5.0

#: RFC 6455 close codes used on refusal when the server offers no HTTP response.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013


class SocketState(enum.Enum):
    """CONNECTING -> OPEN [-> DETACHED] -> CLOSED; or CONNECTING -> REFUSED."""

    CONNECTING = "connecting"  # websocket.connect not yet answered
    OPEN = "open"  # accepted; messages flow
    DETACHED = "detached"  # open, but only the owner may still close it
    CLOSED = "closed"  # we closed, the peer disconnected, or a send failed
    REFUSED = "refused"  # answered with an HTTP response or a close before accept


CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_ABNORMAL = 1006  # no close frame: the connection dropped (never sent on the wire)

#: How long the socket's close waits for the peer's close frame after its own.
CLOSE_WAIT_S = 1.0


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked (server-to-client) RFC 6455 text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
