"""The InstructEdit Studio web app (Gradio) and its UI-independent layers: the web face (its entry
point is ``app.py`` at the repository top; see docs/architecture.md).

Layers, from the bottom up: :mod:`.sessions` (per-session state, thread-safe), :mod:`.subjects`
(subject and kind guesses, the built-in subject lists), :mod:`.blast` (the blast radius: which
probes, and their counts; measured with :mod:`instructedit.measuring`, which also measures what
one edit did, for the studio and the CLI alike),
:mod:`.history` (export/import format), :mod:`.views`, :mod:`.charts` and :mod:`.report` (what the
page shows: tables, summaries, the blast radius chart, the JSON report), :mod:`.service` (every
user action, given a session id; no Gradio), and :mod:`.app` (the Gradio page, the only module
that imports Gradio).
"""
