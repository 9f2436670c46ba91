"""Serving many sessions at once: :mod:`.batcher` runs generation calls that arrive together from
different sessions as one batched ``generate``, each row under its own session's edits."""
