"""Benchmarks: the load tester (``callengine loadtest``), its report, and the peers it is compared with.

Public surface: ``bench.loadtest.main(args) -> int`` (the CLI entry point) and
``bench.loadtest.run_loadtest(...)`` (a trio coroutine returning the report dict);
``bench.report`` renders reports (Markdown, PNG) and regenerates the tables in
``docs/benchmarks.md``.
"""
