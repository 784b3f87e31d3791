"""Every user mistake the CLI must answer with one ``error:`` line and exit status 2.

One list, two uses: ``test_user_errors.py`` runs each case through the real CLI (in process, on
tiny teachers and generated files), and ``docs/errors.md`` shows the same cases as a table
(``python tests/cli_cases.py`` prints it; a test checks the doc is current).

A case's ``args`` and ``message`` may name the placeholders below; the runner fills them in and
the docs table shows them in capitals (``{teacher}`` -> ``TEACHER``):

* ``{tmp}``      an empty temporary directory (the current directory of the run)
* ``{teacher}``  a tiny Llama teacher directory (model + word-level tokenizer), built once
* ``{converted}`` the same teacher converted with ``liger-gla`` and saved, built once

``setup(tmp)`` writes whatever else the case needs (a bad file, a user's directory) into ``tmp``;
``check(tmp)`` runs after the command (e.g. the user's files are still there, byte for byte).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the user's input, as the docs table shows it
    args: tuple[str, ...]
    message: str  # a substring of the error line
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path], None] | None = None
    exit_code: int = 2


def _cases() -> list[Case]:
    from cases_checkpoints import CHECKPOINT_CASES
    from cases_loading import LOADING_CASES
    from cases_outputs import OUTPUT_CASES

    return [*OUTPUT_CASES, *LOADING_CASES, *CHECKPOINT_CASES]


@dataclass(frozen=True)
class Fault:
    """Something that happens to a run (not a mistake in its input), and what the toolkit does."""

    what: str
    outcome: str
    exit_code: int | str
    test: str  # the test that checks it: "module.py::function"


FAULTS = [
    Fault("Ctrl-C (SIGINT) during a training stage",
          "finishes the optimizer step, writes a checkpoint at it, prints it and `to continue: linearize ... --resume`",
          130, "test_interruptions.py::test_sigint_in_stage_1_and_sigterm_in_stage_2_resume_to_the_uninterrupted_model"),
    Fault("SIGTERM (SLURM, Kubernetes preemption) during a training stage", "the same as SIGINT", 143,
          "test_interruptions.py::test_sigint_in_stage_1_and_sigterm_in_stage_2_resume_to_the_uninterrupted_model"),
    Fault("SIGTERM to every process of a multi-process launch (DDP)",
          "the processes agree on one step and write one checkpoint together; rank 0 says how to continue; "
          "the same launch with `--resume` finishes with the uninterrupted model", 143,
          "test_training.py::test_sigterm_to_a_two_process_launch_checkpoints_one_step_and_resumes_to_the_same_model"),
    Fault("SIGINT / SIGTERM outside training (loading, measuring, saving)",
          "stops at once; outputs are written whole or not at all; names the checkpoints a `--resume` continues from",
          "130 / 143", "test_interruptions.py::test_a_signal_outside_training_stops_at_once_and_writes_nothing"),
    Fault("`--resume` after an interruption in either stage",
          "continues from the checkpoint's step; the saved model equals an uninterrupted run's (logits within 1e-6)", 0,
          "test_interruptions.py::test_sigint_in_stage_1_and_sigterm_in_stage_2_resume_to_the_uninterrupted_model"),
    Fault("`--resume` with another teacher, data, recipe or budget",
          "`error: --resume: the checkpoints in RUN were trained from other inputs (KEY: OLD -> NEW; ...)`", 2,
          "test_interruptions.py::test_resume_refuses_other_data_or_teacher_naming_each_difference"),
    Fault("`--resume` with nothing to resume", "says so and starts from the beginning", 0,
          "test_interruptions.py::test_sigint_in_stage_1_and_sigterm_in_stage_2_resume_to_the_uninterrupted_model"),
    Fault("a second run into a directory a live run is using",
          "`error: --out DIR is in use by another run (pid, host, start time, command)`", 2,
          "test_interruptions.py::test_sigint_in_stage_1_and_sigterm_in_stage_2_resume_to_the_uninterrupted_model"),
    Fault("a lock left by a process that no longer exists", "recognised as stale and taken over", "-",
          "test_interruptions.py::test_a_stale_lock_of_a_dead_process_is_taken_over_and_a_live_one_is_not"),
    Fault("kill -9 while a checkpoint is being written", "the previous checkpoint stays the valid latest one", "-",
          "test_interruptions.py::test_kill_9_while_writing_a_checkpoint_leaves_the_previous_one_valid"),
]


def render_faults() -> str:
    lines = ["| what happens | what linearize does | exit | checked by |", "|---|---|---:|---|"]
    for f in FAULTS:
        lines.append(f"| {f.what} | {f.outcome} | {f.exit_code} | `tests/{f.test}` |")
    return "\n".join(lines) + "\n"


PLACEHOLDERS = ("tmp", "teacher", "converted")


def for_docs(text: str) -> str:
    for name in PLACEHOLDERS:
        text = text.replace("{" + name + "}", name.upper())
    return text


def render_table(cases: list[Case] | None = None) -> str:
    """The markdown table of docs/errors.md."""
    cases = _cases() if cases is None else cases
    lines = ["| input | `error:` line contains | exit |", "|---|---|---:|"]
    for case in cases:
        command = " ".join(["linearize", *case.args])
        what = f"{case.what}: `{for_docs(command)}`"
        message = for_docs(case.message).replace("|", "\\|")
        lines.append(f"| {what.replace('|', chr(92) + '|')} | `{message}` | {case.exit_code} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    print(render_table())
    print(render_faults(), end="")
