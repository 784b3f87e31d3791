"""Held-out perplexity of the offline teacher and of each recipe's freshly converted student.

    python scripts/bench_conversion.py [--model SPEC] [--recipes liger-gla,lizard,...] [--tokens 4096]

Prints a markdown table (teacher / untrained student perplexity, its ratio to the teacher's overall and
by position, and conversion time per recipe) with the machine and date, ready to paste into the docs.
``--tokens 512 --seq-len 512`` gives the table of docs/training.md ("What the shipped recipes change").
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import time
from datetime import date

from linearize.perplexity import perplexity_report
from linearize.pipeline import convert, heldout_tokens
from linearize.recipes import load_recipe
from linearize.teachers import load_model


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="teacher (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--recipes", default="liger-gla-paper,liger-gla,lizard-paper,lizard,lolcats,swa,gla")
    parser.add_argument("--tokens", type=int, default=4096, help="held-out tokens")
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()

    t0 = time.perf_counter()
    teacher = load_model(args.model)
    load_s = time.perf_counter() - t0
    tokens = heldout_tokens(teacher.tokenizer, args.tokens)
    rows = [("teacher", perplexity_report(teacher.model, tokens, args.seq_len, desc="teacher"), None, load_s)]
    for name in args.recipes.split(","):
        student = copy.copy(teacher)
        student.model = copy.deepcopy(teacher.model)
        t0 = time.perf_counter()
        convert(student, load_recipe(name))
        convert_s = time.perf_counter() - t0
        rows.append((name, perplexity_report(student.model, tokens, args.seq_len, desc=name), convert_s, None))
        del student

    print(f"\nHeld-out perplexity, {teacher.name}, {len(tokens)} tokens of held-out Python docs "
          f"(windows of {args.seq_len}); {cpu_name()}, {__import__('os').cpu_count()} cores, {date.today()}\n")
    base = rows[0][1]
    buckets = list(base.by_position)
    print("| model | held-out ppl | ratio to teacher | ratio at " + " / ".join(buckets) + " | conversion time |")
    print("|---|---|---|---|---|")
    for name, report, convert_s, load_s in rows:
        when = f"{convert_s:.2f} s" if convert_s is not None else f"(load {load_s:.1f} s)"
        label = "teacher" if name == "teacher" else f"{name} (converted, untrained)"
        by = " / ".join(f"{report.by_position[b] / base.by_position[b]:,.1f}x" for b in buckets)
        print(f"| {label} | {report.overall:,.2f} | {report.overall / base.overall:,.1f}x | {by} | {when} |")


if __name__ == "__main__":
    main()
