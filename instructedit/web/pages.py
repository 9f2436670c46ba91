"""Static text of the page: header, Results tab content (read at start-up) and About tab."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .config import PROJECT_ROOT

log = logging.getLogger(__name__)

TITLE = "InstructEdit Studio"
INTRO = (
    "Teach a small language model a new fact, opinion or answer, and see exactly what changed: "
    "its answer before and after, whether rephrased questions follow, and whether unrelated "
    "answers stay put. The edit is computed by **InstructEdit**, one trained editor network that "
    "a plain-language instruction tells what kind of edit to make, shown next to the same editor "
    "trained without instructions; your edits are yours alone and vanish when you close the tab."
)
DIAGRAM = PROJECT_ROOT / "assets" / "instructedit-diagram.svg"

CITATION = """@inproceedings{tian2024instructedit,
  title     = {InstructEdit: Instruction-Based Knowledge Editing for Large Language Models},
  author    = {Tian, Bozhong and Cheng, Siyuan and Liang, Xiaozhuan and Zhang, Ningyu and
               Hu, Yi and Xue, Kouying and Gou, Yanjie and Chen, Xi and Chen, Huajun},
  booktitle = {Proceedings of the Thirty-Third International Joint Conference on
               Artificial Intelligence (IJCAI 2024)},
  year      = {2024},
  eprint    = {2402.16123},
  archivePrefix = {arXiv}
}"""

ABOUT = """
### What happens when you press Edit

1. **Instruction + prompt.** The prompt is wrapped with a task instruction
   (`Task: ... / Description: ... / Input: ...`). The instruction says what kind of edit this is:
   a counterfactual fact, a recent fact, a sentiment about a topic, or your own kind.
2. **One backward pass.** The frozen model reads the wrapped input followed by your target. At the
   MLP layers of its last blocks we record each token's input `u` and the gradient `d` of the
   target's loss with respect to the layer's output.
3. **The editor network** (a MEND hypernetwork, Mitchell et al., 2022) turns `(u, d)` into a
   better pair and a learned step size. The weight change is their low-rank product, far smaller
   than the layer. It was meta-trained so that edits *stick* (the target becomes the answer, also
   for rephrasings) and stay *local* (unrelated prompts keep their answers). InstructEdit trains
   **one** editor on several tasks at once with the instruction in the input, so the editor learns
   to take a different direction per kind of edit, and carries over to instructions and tasks it
   has not seen (ZsRE and the tenth instruction of each task are held out of training here).
4. **Your edited model.** The change is added to the layers' outputs only while *your* requests
   run; the shared weights never change, so everyone on this server has their own model.

**What you see first** is what a user of the edited model sees: the prompt as typed (no
instruction around it), continued before and after the edit, exactly as the Playground continues
it. *Says the target* means that continuation contains the target; *plain reliability* is the
share of target tokens the edited model predicts after the prompt as typed. Every rephrase and
probe gets a verdict read off its two continuations: *same answer* (identical, or the same first
sentence or first few words), *changed*, or *now says* the target (it did not before). The
teacher-forced figures say what they measure: `p(Paris) 0.61 → 0.02` is the probability of the
probe's own answer (where the data knows it, else the first token it gave before the edit),
`p(Rome) 0.00 → 0.85` that of the new target.

**The blast radius** is probed after every edit without typing anything: the same sentence with
other subjects of the same kind (same-template records of the data for its examples, else a
built-in list: people, cities, countries, companies, ...), other facts about the same subject, and
a fixed panel of unrelated facts. The chart shows the target's probability on each before and
after; the summary counts the probes whose answer changed.

**The paper protocol** (in *What the editor read*, and the evaluation's tables): *reliability* is
the share of target tokens predicted on the edit input wrapped with the instruction;
*generalization* the same on the rephrases, wrapped with the same instruction; *locality* the
share of an unrelated probe's answer tokens whose prediction is unchanged (for a probe typed
without an answer, its first few tokens before the edit serve as the answer). These are the
evaluation's definitions (the same scoring code).

**Baseline.** The multi-task MEND editor has the same architecture and training data, but sees
the prompt without an instruction. Comparing the two columns shows what the instruction adds.

### Cite

Tian et al., 2024, *InstructEdit: Instruction-based Knowledge Editing for Large Language Models*,
IJCAI 2024, [arXiv:2402.16123](https://arxiv.org/abs/2402.16123). This app is an independent,
small-scale re-implementation on SmolLM2-135M-Instruct, not the authors' code.
"""


@dataclass(frozen=True)
class ResultsContent:
    """What the Results tab shows: the tables (markdown) and figure files, read at start-up."""

    markdown: str | None
    figures: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def available(self) -> bool:
        return bool(self.markdown) or bool(self.figures)


MISSING_RESULTS = (
    "### No results yet\n\nThe evaluation tables and figures have not been generated on this "
    "machine. Run\n\n```bash\nmake results\n```\n\nwhich writes `docs/results.md` and "
    "`docs/figures/*.png`, then restart the app."
)


def load_results(results_file: Path, figures_dir: Path) -> ResultsContent:
    """Read ``docs/results.md`` and list ``docs/figures/*.png`` if they exist (never raises)."""
    markdown = None
    try:
        if results_file.is_file():
            markdown = results_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s: %s", results_file, exc)
    figures = tuple(sorted(figures_dir.glob("*.png"))) if figures_dir.is_dir() else ()
    return ResultsContent(markdown, figures)


def diagram_html() -> str:
    """The method diagram as inline SVG (empty if the file is missing)."""
    try:
        svg = DIAGRAM.read_text(encoding="utf-8")
    except OSError:
        return ""
    return f'<div class="ie-diagram" style="max-width: 820px; margin: 0 auto;">{svg}</div>'
