#!/usr/bin/env python
"""Recovery benchmark on CPU: every recipe on the offline teacher with the same token budget.

For each recipe: held-out perplexity of the teacher, the converted model and the recovered model
on (1) the held-out pydoc documents (same source as the training data) and (2) licence texts
(a different source, see ``linearize.data.license_documents``), plus tokens, wall time and peak
memory. One extra row, ``teacher+lora``, tunes the *unconverted* teacher with the same LoRA budget
on the same data: recovery has to beat domain adaptation, not just the converted model.

Each run is a separate process (clean peak-memory numbers); results are appended to a JSONL file
as they finish, and a Markdown table is printed at the end (``--table`` prints it from the file).

    python scripts/bench_recovery.py --tokens 8192 --out runs/bench/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = ["liger-gla", "teacher+lora", "lolcats", "gla", "swa", "lizard"]


def run_one(name: str, tokens: int, seq_len: int, batch_size: int, eval_tokens: int) -> dict:
    import torch

    from linearize.pipeline import run_pipeline
    from linearize.recipes import load_recipe

    budget = {"seq_len": seq_len, "batch_size": batch_size, "tokens": tokens, "checkpoint_every": 0}
    t0 = time.perf_counter()
    if name == "teacher+lora":
        row = _teacher_lora(budget, eval_tokens)
    else:
        recipe = load_recipe(name)
        updates = {"recovery": recipe.recovery.model_copy(update=budget)}
        if recipe.transfer is not None:
            updates["transfer"] = recipe.transfer.model_copy(update=budget)
        recipe = recipe.model_copy(update=updates)
        with tempfile.TemporaryDirectory() as run_dir:
            result = run_pipeline(None, recipe, None, eval_tokens=eval_tokens, budget="paper", data="offline",
                                  run_dir=run_dir, other_source=True, progress=False)
        training = result.training
        row = {
            "ppl": result.perplexity,
            "other_ppl": result.other_perplexity,
            "stage1_tokens": training.get("transfer", {}).get("tokens", 0),
            "stage2_tokens": training["recovery"]["tokens"],
            "train_seconds": sum(training[s]["seconds"] for s in ("transfer", "recovery") if s in training),
            "val_loss": [training["recovery"]["val_before"], training["recovery"]["val_after"]],
        }
    row.update(
        recipe=name,
        wall_seconds=time.perf_counter() - t0,
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        cpu_seconds=sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        threads=torch.get_num_threads(),
    )
    return row


def _teacher_lora(budget: dict, eval_tokens: int) -> dict:
    """The unconverted teacher, LoRA-tuned like liger-gla's stage 2 on the same data."""
    from linearize.data import license_documents, prepare_data
    from linearize.perplexity import perplexity, tokenize_documents
    from linearize.pipeline import heldout_tokens
    from linearize.recipes import load_recipe
    from linearize.teachers import load_model
    from linearize.training import (
        StageConfig,
        apply_lora,
        make_accelerator,
        merge_lora,
        train_stage,
    )

    recipe = load_recipe("liger-gla")
    loaded = load_model(None)
    tok = loaded.tokenizer
    held, other = heldout_tokens(tok, eval_tokens), tokenize_documents(tok, license_documents(), eval_tokens)
    ppl = {"teacher": perplexity(loaded.model, held, 512, progress=False)}
    other_ppl = {"teacher": perplexity(loaded.model, other, 512, progress=False)}
    data = prepare_data(tok, "offline", budget["seq_len"], "text", recipe.data.validation_fraction, None, recipe.seed)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    peft_model = apply_lora(loaded.model, recipe.recovery.lora)
    cfg = StageConfig.from_settings("recovery", recipe.recovery, seed=recipe.seed, **budget)
    with tempfile.TemporaryDirectory() as run_dir:
        res = train_stage(peft_model, cfg, data.train, data.validation, run_dir, make_accelerator(), progress=False)
    model = merge_lora(peft_model)
    ppl["recovered"] = perplexity(model, held, 512, progress=False)
    other_ppl["recovered"] = perplexity(model, other, 512, progress=False)
    return {"ppl": ppl, "other_ppl": other_ppl, "stage1_tokens": 0, "stage2_tokens": res.tokens,
            "train_seconds": res.seconds, "val_loss": [res.val_before, res.val_after]}


def table(rows: list[dict]) -> str:
    head = ("| recipe | stage 1 / stage 2 tokens | held-out ppl teacher / converted / recovered "
            "| licence-text ppl teacher / converted / recovered | train s | wall s | CPU s | peak RSS GiB |")
    lines = [head, "|" + "---|" * 8]

    def f(x):
        return "-" if x is None else (f"{x:,.0f}" if x >= 1000 else f"{x:.2f}")

    for r in rows:
        p, o = r["ppl"], r["other_ppl"]
        lines.append(
            f"| {r['recipe']} | {r['stage1_tokens']:,} / {r['stage2_tokens']:,} "
            f"| {f(p.get('teacher'))} / {f(p.get('converted'))} / {f(p.get('recovered'))} "
            f"| {f(o.get('teacher'))} / {f(o.get('converted'))} / {f(o.get('recovered'))} "
            f"| {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | {'-' if r.get('cpu_seconds') is None else format(r['cpu_seconds'], '.0f')} | {r['peak_rss_gib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated; 'teacher+lora' is the baseline")
    ap.add_argument("--tokens", type=int, default=8192, help="training tokens per stage")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--out", default="runs/bench/results.jsonl")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    args = ap.parse_args()

    if args.one:
        row = run_one(args.one, args.tokens, args.seq_len, args.batch_size, args.eval_tokens)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    out = Path(args.out)
    if not args.table:
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.recipes.split(","):
            cmd = [sys.executable, __file__, "--one", name, "--tokens", str(args.tokens), "--seq-len", str(args.seq_len),
                   "--batch-size", str(args.batch_size), "--eval-tokens", str(args.eval_tokens)]
            print(f"== {name}", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "TQDM_DISABLE": "1"})
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(lines[-1][len("RESULT "):])
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(table([row]).splitlines()[-1], flush=True)
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
