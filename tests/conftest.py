"""Shared fixtures. Store fixtures (a real PostgreSQL per session) come from
``tests.conftest_store``; the shared host (a real ``callengine serve`` on a free
port) from ``tests.conftest_host``. The host fixture is registered here, once: a
test module that imported it would get a host of its own (pytest keys a fixture
by the module that defines it), started anew and kept until the session ends."""

from tests.conftest_host import host  # noqa: F401
from tests.conftest_store import *  # noqa: F401,F403
