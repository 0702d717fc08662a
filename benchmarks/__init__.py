"""memimg's benchmark suite: memimg side by side with ZODB, eventsourcing and raw sqlite3.

Run it with ``python -m benchmarks --quick`` (or without ``--quick`` for the
full sizes); docs/performance.md explains the workloads and the results.

Layout: :mod:`benchmarks.suite` (command line), :mod:`benchmarks.harness`
(sizes, repetitions, results), :mod:`benchmarks.systems` (one module per
compared system behind one interface), :mod:`benchmarks.workloads`,
:mod:`benchmarks.inmemory` and :mod:`benchmarks.writers` (the workloads),
:mod:`benchmarks.report` and :mod:`benchmarks.bars` (the table and the SPEC
bars), :mod:`benchmarks.child` (clean child processes).
"""
