"""The measure of one edit, for every face and workflow (no face here: no gradio, no argparse).

- :mod:`.verdicts`: the verdict on a probe's two continuations ("same answer", "changed",
  "now says <target>") and :func:`~.verdicts.contains_answer`, the evaluation's test;
- :mod:`.probing`: probes measured before and after an edit, batched (:func:`~.probing.measure_probes`),
  and the memoised greedy continuations they are read from;
- :mod:`.single`: one edit's report (:func:`~.single.measure_edit`: the plain protocol, the paper
  protocol and the verdicts), used by the studio and by the CLI's ``edit`` command.

The evaluation (:mod:`instructedit.evaluate.runner`) is the batched form over many records.
Nothing is imported here, so ``import instructedit.measuring.verdicts`` stays free of torch.
"""
