"""The lifecycle every local gRPC peer shares: a threaded server on loopback.

A subclass names its ``SERVICE`` and returns its method handlers from
``_handlers()``; this class owns the ``grpc.Server`` (one per peer, started by
``start``, stopped by ``stop`` or the context manager) and the chosen port.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc


class GrpcPeer:
    SERVICE = ""
    max_workers = 16

    host: str
    port: int
    _server: grpc.Server | None

    def _handlers(self) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> Any:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=type(self).__name__)
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(self.SERVICE, self._handlers()),))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self, grace: float = 0.2) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(5)
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
