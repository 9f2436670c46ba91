"""The InstructEdit Studio web app (Gradio) and its UI-independent layers.

Layers, from the bottom up: :mod:`.sessions` (per-session state, thread-safe),
:mod:`.measure` (scores of one edit), :mod:`.history` (export/import format),
:mod:`.service` (every user action, given a session id; no Gradio), and :mod:`.app`
(the Gradio page, the only module that imports Gradio).
"""
