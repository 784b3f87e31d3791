#!/usr/bin/env python
"""Recovery benchmark on CPU: every recipe on the offline teacher at the demo budget.

For each recipe (a shipped name or a YAML path, for ablations): held-out perplexity of the teacher,
the converted model and the recovered model at 512 and 2048 tokens of context on the held-out
Python documentation (same source as the training data, never trained on), by position at 2048,
and at 512 on licence texts (a different source), plus tokens, wall time and peak memory. One extra
row, ``teacher+lora``, tunes the *unconverted* teacher with the default recipe's LoRA and stage-2
settings on the same data: recovery has to beat domain adaptation, not just the converted model.

Each run is a separate process (clean peak-memory numbers; one at a time, since two torch processes
on two cores run ~10x slower); results are appended to a JSONL file as they finish, and a Markdown
table is printed at the end (``--table`` prints it from the file).

    python scripts/bench_recovery.py --out runs/bench/recovery.jsonl
    python scripts/bench_recovery.py --recipes liger-gla,my-ablation.yaml --tokens 32768 --out runs/bench/a.jsonl
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

RECIPES = ["liger-gla", "lizard", "lolcats", "gla", "swa", "liger-gla-paper", "lizard-paper", "teacher+lora"]
BASELINE = "liger-gla"  # teacher+lora uses this recipe's stage-2 settings


def run_one(name: str, tokens: int | None, eval_tokens: int) -> dict:
    import torch

    from linearize.pipeline import run_pipeline
    from linearize.recipes import load_recipe

    t0 = time.perf_counter()
    if name == "teacher+lora":
        row = _teacher_lora(tokens, eval_tokens)
    else:
        with tempfile.TemporaryDirectory() as run_dir:
            result = run_pipeline(None, load_recipe(name), None, eval_tokens=eval_tokens, budget="demo",
                                  tokens=tokens, data="offline", run_dir=run_dir, other_source=True, progress=False)
        training = result.training
        row = {
            "reports": {stage: {str(n): r.to_dict() for n, r in by.items()} for stage, by in result.reports.items()},
            "other_ppl": result.other_perplexity,
            "stage1_tokens": training.get("transfer", {}).get("tokens", 0),
            "stage2_tokens": training["recovery"]["tokens"],
            "train_seconds": sum(training[s]["seconds"] for s in ("transfer", "recovery") if s in training),
            "val_loss": [training["recovery"]["val_before"], training["recovery"]["val_after"]],
        }
    row.update(
        recipe=Path(name).stem if name.endswith((".yaml", ".yml")) else name,
        wall_seconds=time.perf_counter() - t0,
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        cpu_seconds=sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        threads=torch.get_num_threads(),
    )
    return row


def _teacher_lora(tokens: int | None, eval_tokens: int) -> dict:
    """The unconverted teacher, LoRA-tuned with the baseline recipe's demo stage 2 on the same data."""
    from linearize.data import license_documents, prepare_data
    from linearize.perplexity import EVAL_LENGTHS, perplexity, perplexity_report, tokenize_documents
    from linearize.pipeline import apply_budget, heldout_tokens
    from linearize.recipes import load_recipe
    from linearize.teachers import load_model
    from linearize.training import StageConfig, apply_lora, make_accelerator, merge_lora, train_stage

    recipe = apply_budget(load_recipe(BASELINE), "demo", tokens)
    rs = recipe.recovery
    loaded = load_model(None)
    tok = loaded.tokenizer
    held, other = heldout_tokens(tok, eval_tokens), tokenize_documents(tok, license_documents(), eval_tokens)

    def measure(model) -> tuple[dict, float]:
        reports = {str(n): perplexity_report(model, held, n, progress=False).to_dict() for n in EVAL_LENGTHS}
        return reports, perplexity(model, other, EVAL_LENGTHS[0], progress=False)

    reports, other_ppl = {}, {}
    reports["teacher"], other_ppl["teacher"] = measure(loaded.model)
    data = prepare_data(tok, "offline", rs.seq_len, "text", recipe.data.validation_fraction, None, recipe.seed,
                        max_tokens=rs.tokens)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    peft_model = apply_lora(loaded.model, rs.lora)
    cfg = StageConfig.from_settings("recovery", rs, seed=recipe.seed)
    with tempfile.TemporaryDirectory() as run_dir:
        res = train_stage(peft_model, cfg, data.train, data.validation, run_dir, make_accelerator(), progress=False)
    reports["recovered"], other_ppl["recovered"] = measure(merge_lora(peft_model))
    return {"reports": reports, "other_ppl": other_ppl, "stage1_tokens": 0, "stage2_tokens": res.tokens,
            "train_seconds": res.seconds, "val_loss": [res.val_before, res.val_after]}


def _f(x) -> str:
    return "-" if x is None else (f"{x:,.0f}" if x >= 1000 else f"{x:.2f}")


def _ppl(row: dict, stage: str, length: str) -> float | None:
    return row["reports"].get(stage, {}).get(length, {}).get("overall")


def table(rows: list[dict]) -> str:
    """Perplexity at both lengths (teacher / converted / recovered, and recovered over teacher), licence text."""
    head = ("| recipe | stage 1 / 2 tokens | ppl @512 teacher / converted / recovered | ratio @512 "
            "| ppl @2048 teacher / converted / recovered | ratio @2048 | licence @512 teacher / recovered | ratio "
            "| train s | peak RSS GiB |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [r["recipe"], f"{r['stage1_tokens']:,} / {r['stage2_tokens']:,}"]
        for n in ("512", "2048"):
            t, c, rec = (_ppl(r, s, n) for s in ("teacher", "converted", "recovered"))
            cells += [f"{_f(t)} / {_f(c)} / {_f(rec)}", f"{rec / t:.2f}x" if t and rec else "-"]
        o = r["other_ppl"]
        cells += [f"{_f(o.get('teacher'))} / {_f(o.get('recovered'))}",
                  f"{o['recovered'] / o['teacher']:.2f}x" if o.get("teacher") and o.get("recovered") else "-",
                  f"{r['train_seconds']:.0f}", f"{r['peak_rss_gib']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def position_table(rows: list[dict], length: str = "2048") -> str:
    """Recovered perplexity over the teacher's, by position bucket at ``length`` tokens of context."""
    buckets = next((list(r["reports"]["teacher"][length]["by_position"]) for r in rows
                    if length in r["reports"].get("teacher", {})), [])
    lines = ["| recipe | " + " | ".join(buckets) + " |", "|" + "---|" * (len(buckets) + 1)]
    for r in rows:
        teacher, rec = r["reports"].get("teacher", {}).get(length), r["reports"].get("recovered", {}).get(length)
        if not teacher or not rec:
            continue
        cells = [f"{rec['by_position'][b]:.2f} ({rec['by_position'][b] / teacher['by_position'][b]:.2f}x)"
                 for b in buckets]
        lines.append(f"| {r['recipe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help="comma-separated shipped names or YAML paths; 'teacher+lora' is the baseline")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per stage (default: the demo budget)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--out", default="runs/bench/recovery.jsonl")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="only print the tables of --out")
    args = ap.parse_args()

    if args.one:
        row = run_one(args.one, args.tokens, args.eval_tokens)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    out = Path(args.out)
    if not args.table:
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.recipes.split(","):
            cmd = [sys.executable, __file__, "--one", name, "--eval-tokens", str(args.eval_tokens)]
            if args.tokens:
                cmd += ["--tokens", str(args.tokens)]
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
    print()
    print(position_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
