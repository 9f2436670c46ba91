"""Section 1b: the studio's first answer, server side, on the app's backbone.

An edit request in the studio shows a first look as soon as it has it (the prompt as typed,
continued before and after the edit: :func:`~instructedit.measuring.single.measure_first_look`),
then the whole report (rephrases, locality probes and the texts the editor read:
:func:`~instructedit.measuring.single.measure_edit`; the blast radius and the comparison editors
follow in the page). Timed here without Gradio or a browser (the browser test times the page):

- cold: nothing cached (a prompt nobody has continued yet);
- warm: the unedited continuation of the prompt already in the server's memory
  (:class:`~instructedit.measuring.probing.UneditedTexts`), as after an earlier edit of or a
  Playground run on the same sentence;
- whole: edit, first look and the whole report, cold.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

from ..editing.editor import Editor, EditRequest
from ..measuring.probing import GenerationCache, UneditedTexts, generate_under
from ..measuring.single import measure_edit, measure_first_look
from .stats import summarize


def measure_first_answer(editor: Editor, requests: Sequence[EditRequest], max_new_tokens: int,
                         goal_s: float) -> dict:
    """Seconds from an edit request to its first look (cold and warm) and to its whole report."""
    backbone = editor.backbone
    memory = UneditedTexts()

    def first_look(request: EditRequest, cache: GenerationCache) -> float:
        start = time.perf_counter()
        edit = editor.edit(request)
        measure_first_look(backbone, edit, [], max_new_tokens, cache=cache)
        return time.perf_counter() - start

    first_look(requests[0], GenerationCache())  # warm-up (kernels, allocator)
    cold, warm, whole = [], [], []
    for request in requests:
        cold.append(first_look(request, GenerationCache()))
        generate_under(backbone, [], [request.prompt.strip()], max_new_tokens, GenerationCache(memory))
        warm.append(first_look(request, GenerationCache(memory)))
        start = time.perf_counter()
        cache = GenerationCache()
        edit = editor.edit(request)
        measure_first_look(backbone, edit, [], max_new_tokens, cache=cache)
        measure_edit(backbone, edit, editor.use_instructions, [], max_new_tokens, cache=cache)
        whole.append(time.perf_counter() - start)
    cold_s, warm_s, whole_s = summarize(cold), summarize(warm), summarize(whole)
    return {"records": len(requests), "editor": editor.name, "max_new_tokens": max_new_tokens,
            "cold_s": cold_s.to_dict(), "warm_s": warm_s.to_dict(), "whole_s": whole_s.to_dict(),
            "goal_s": goal_s, "met": cold_s.median <= goal_s}
