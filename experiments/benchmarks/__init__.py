"""The benchmark suite: ``python -m experiments.benchmarks`` (``--help`` for the flags).

Parts, each a table in ``runs/benchmarks/results.md`` and ``results.json`` (or ``--out``):

* ``glif``: GLIF forward+backward time of each implementation of :func:`glif_jax.neuron.glif`
  for several T, in float32 and bfloat16, as GB/s over the minimal memory traffic and as a
  fraction of a copy-bandwidth ceiling, and against a per-step PyTorch loop, all in one run
  (:mod:`experiments.benchmarks.glif_speed`);
* ``residuals``: bytes kept for the backward pass per neuron and time step, for each choice
  between storing and recomputing (:mod:`experiments.benchmarks.residuals`);
* ``training``: ResNet-19 training-step throughput, compile time and memory, with and without
  recomputation (:mod:`experiments.benchmarks.training`).

``--quick`` runs every part at toy sizes in a few seconds (the smoke test).
"""
