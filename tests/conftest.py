"""Shared fixtures. Store fixtures (a real PostgreSQL per session) come from
``tests.conftest_store``; host fixtures (a real hypercorn server on a free port)
from ``tests.conftest_host``."""

from tests.conftest_store import *  # noqa: F401,F403
