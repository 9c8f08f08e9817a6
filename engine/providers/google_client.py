"""One way to build a Google Cloud client, for Speech and Text-to-Speech alike.

With ``endpoint`` and ``insecure`` the real client library talks over a
plaintext gRPC channel to a local peer and looks up no credentials (the
client's transport is given the channel directly). Otherwise Google's standard
credential discovery applies, with an optional explicit or regional endpoint
(``{region}-{service}.googleapis.com``).
"""

from __future__ import annotations

from typing import Any

import grpc


def build_client(
    client_cls: Any,
    transport_cls: Any,
    service: str,
    *,
    endpoint: str | None,
    insecure: bool,
    region: str | None,
    credentials: object | None,
) -> tuple[Any, grpc.Channel | None]:
    """Returns ``(client, channel)``; ``channel`` is the insecure channel to close, or None."""
    if endpoint and insecure:
        channel = grpc.insecure_channel(endpoint)
        return client_cls(transport=transport_cls(channel=channel)), channel
    api_endpoint = endpoint or (f"{region}-{service}.googleapis.com" if region else None)
    options = {"api_endpoint": api_endpoint} if api_endpoint else None
    return client_cls(credentials=credentials, client_options=options), None
