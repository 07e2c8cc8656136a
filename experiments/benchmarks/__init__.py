"""The benchmark suite: ``python -m experiments.benchmarks`` (``--help`` for the flags).

Parts, each a table in ``runs/benchmarks/results.md`` and ``results.json`` (or ``--out``):

* ``glif``: GLIF forward+backward time of each implementation of :func:`glif_jax.neuron.glif`
  for several T, in float32 and bfloat16, as GB/s over the minimal memory traffic and as a
  fraction of a copy-bandwidth ceiling, and against a per-step PyTorch loop, all in one run
  (:mod:`experiments.benchmarks.glif_speed`);
* ``shapes``: the same at one T for layers of other shapes;
* ``residuals``: bytes kept for the backward pass per neuron and time step, for each choice
  between storing and recomputing (:mod:`experiments.benchmarks.residuals`);
* ``training``: a whole training step of the recipe, glif_jax's against a PyTorch transcription of
  the reference run eager and under ``torch.compile``: step time, images/s, compile time, peak
  memory, convolution TFLOP/s (:mod:`experiments.benchmarks.training`,
  :mod:`experiments.benchmarks.torch_networks`);
* ``max_batch``: the largest batch of a training step that fits, both frameworks, with and
  without recomputation (:mod:`experiments.benchmarks.max_batch`).

``--quick`` runs every part at toy sizes in a few seconds (the smoke test). On a GPU,
``experiments/benchmarks/gpu_check.sh`` runs the GPU tests and the whole benchmark in one go.
"""
