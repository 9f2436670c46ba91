"""The model layer: loading a backbone and running it, knowing nothing of edits.

- :mod:`.adapters`: per-family module names, weight orientation, running the top blocks,
  interventions on module outputs (causal tracing's and ROME's read-outs and replacements);
- :mod:`.backbone`: load a model (alias, folder, hub id; bitsandbytes 8/4-bit), the converted-model cache;
- :mod:`.generation`: greedy generation (chat template optional), decoded by :mod:`.decoding`'s lean
  loop (and, for a CPU 4-bit model loaded with ``fast_4bit``, :mod:`.packed4bit`'s kernel route);
- :mod:`.forward`: the teacher-forced forward passes of training and evaluation
  (:class:`~.forward.CachedTopForward`: only the edited top blocks, from cached hidden states).

Nothing is imported here, so importing one module does not load the others.
"""
