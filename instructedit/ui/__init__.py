"""The InstructEdit Studio web app (Gradio) and its UI-independent layers.

Layers, from the bottom up: :mod:`.sessions` (per-session state, thread-safe), :mod:`.verdicts`
(same answer / changed / now says the target, read off two continuations), :mod:`.subjects`
(subject and kind guesses, the built-in subject lists), :mod:`.probing` (probes measured before
and after an edit, batched), :mod:`.blast` (the blast radius: which probes, and their counts),
:mod:`.measure` (what one edit did: the prompt as typed first, the paper protocol after),
:mod:`.history` (export/import format), :mod:`.views`, :mod:`.charts` and :mod:`.report` (what the
page shows: tables, summaries, the blast radius chart, the JSON report), :mod:`.service` (every
user action, given a session id; no Gradio), and :mod:`.app` (the Gradio page, the only module
that imports Gradio).
"""
