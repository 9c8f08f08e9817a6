"""Local peers speaking real cloud protocols (Google Speech/TTS over gRPC, OpenAI over HTTP), with fault injection.

Each peer starts in-process on a free loopback port (``start()``/``stop()`` or ``with``) and
runs standalone with ``python -m tests.peers.<name> --port P``. Tests and benchmarks point the
real client libraries at them.
"""
