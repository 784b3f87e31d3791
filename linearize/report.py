"""Markdown table of teacher vs students with recovery percentages.

Recovery is the student's score as a percentage of the teacher's: ``100 * student / teacher`` for
metrics where higher is better (accuracy, exact match), ``100 * teacher / student`` where lower is
better (perplexity), so 100% always means "as good as the teacher" and less is worse.

Each task's row shows its recovery as measured (above 100% where the student beats the teacher).
The mean recovery counts every task at most at 100% (:data:`RECOVERY_CAP`), so a student better
than its teacher on one task cannot hide a loss on another, and it says how many of the report's
tasks it covers (a task without a recovery value -- no teacher number, a zero teacher score -- is
not in the mean). Values of 1e6 and more (perplexities of unconverged models) are printed in
scientific notation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .task_pack import PACK_TASKS

RECOVERY_CAP = 100.0  # the most one task contributes to the mean recovery, in percent
LARGE_VALUE = 1e6  # at and above this, numbers are printed in scientific notation


def format_number(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or in scientific notation (``8.76e+16``) from 1e6 on."""
    if math.isfinite(value) and abs(value) >= LARGE_VALUE:
        return f"{value:.{digits}e}"
    return f"{value:.{digits}f}"


@dataclass
class Headline:
    task: str
    metric: str
    value: float
    stderr: float | None = None
    higher_is_better: bool = True
    n: int | None = None  # examples evaluated

    @property
    def is_fraction(self) -> bool:
        return self.higher_is_better and 0.0 <= self.value <= 1.0

    def display(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        if self.is_fraction:
            text = f"{100 * self.value:.1f}"
            if self.stderr is not None and not math.isnan(self.stderr):
                text += f" ± {100 * self.stderr:.1f}"
            return text
        return format_number(self.value)


def recovery(student: Headline, teacher: Headline) -> float | None:
    """Student as a percentage of the teacher (100 = teacher level); None when undefined."""
    s, t = student.value, teacher.value
    if any(math.isnan(x) for x in (s, t)):
        return None
    if teacher.higher_is_better:
        return 100.0 * s / t if t > 0 else None
    return 100.0 * t / s if s > 0 else None


def markdown_report(
    runs: list[tuple[str, list[Headline]]],
    teacher_label: str | None = "teacher",
    meta: dict | None = None,
) -> str:
    """One row per task, one column per model (+ a recovery column per student when a teacher is given).

    Accuracies are shown in percent (± standard error); perplexities as is (lower is better). The
    last row is each student's mean recovery (capped per task, with the number of tasks it covers;
    see the module docstring).
    """
    if not runs:
        raise ValueError("nothing to report")
    by_label = {label: {h.task: h for h in heads} for label, heads in runs}
    tasks: list[str] = []
    for _, heads in runs:
        for h in heads:
            if h.task not in tasks:
                tasks.append(h.task)
    teacher = by_label.get(teacher_label) if teacher_label else None
    header = ["task", "metric"]
    for label, _ in runs:
        header.append(label)
        if teacher is not None and label != teacher_label:
            header.append("recovery")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    recoveries: dict[str, list[float]] = {}
    for task in tasks:
        first = next(by_label[label][task] for label, _ in runs if task in by_label[label])
        arrow = "↑" if first.higher_is_better else "↓"
        unit = " %" if first.is_fraction else ""
        row = [task, f"{first.metric}{unit} {arrow}"]
        for label, _ in runs:
            head = by_label[label].get(task)
            row.append(head.display() if head else "")
            if teacher is not None and label != teacher_label:
                rec = recovery(head, teacher[task]) if head and task in teacher else None
                row.append(f"{rec:.0f}%" if rec is not None else "")
                if rec is not None:
                    recoveries.setdefault(label, []).append(rec)
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    if teacher is not None and recoveries:
        row = ["**mean recovery**", f"≤ {RECOVERY_CAP:.0f}% per task"]
        for label, _ in runs:
            row.append("")
            if label != teacher_label:
                vals = [min(v, RECOVERY_CAP) for v in recoveries.get(label, [])]
                row.append(f"**{sum(vals) / len(vals):.0f}%** ({len(vals)} of {len(tasks)} tasks)" if vals else "")
        lines.append("| " + " | ".join(row) + " |")
        notes.append(
            f"Mean recovery: over the tasks with a recovery value, each counted at most at {RECOVERY_CAP:.0f}% "
            "(a student better than its teacher on one task cannot hide a loss on another); the task rows "
            "show the measured values."
        )
    described = [t for t in tasks if t in PACK_TASKS]
    if described:
        notes.append("Offline pack tasks: " + "; ".join(f"`{t}` {PACK_TASKS[t].description}" for t in described) + ".")
    if meta:
        notes.append(", ".join(f"{k}: {v}" for k, v in meta.items()))
    return "\n".join(lines) + ("\n\n" + "\n\n".join(notes) if notes else "") + "\n"
