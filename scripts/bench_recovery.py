#!/usr/bin/env python
"""Recovery benchmark on CPU: every recipe on the offline teacher at the demo budget.

For each recipe (a shipped name or a YAML path, for ablations): held-out perplexity of the teacher,
the converted model and the recovered model at 512 and 2048 tokens of context on the held-out
Python documentation (same source as the training data, never trained on), by position at 2048,
and at 512 on licence texts (a different source), plus tokens, wall time and peak memory. Then recall inside
and beyond the window (passkeys and associative recall from the offline pack, run by lm-eval) of the
recovered model. One extra
row, ``teacher+lora``, tunes the *unconverted* teacher with the default recipe's LoRA and stage-2
settings on the same data: recovery has to beat domain adaptation, not just the converted model; it
also measures the teacher's recall.

Each run is a separate process (clean peak-memory numbers; one at a time, since two torch processes
on two cores run ~10x slower); results are appended to a JSONL file as they finish, and a Markdown
table is printed at the end (``--table`` prints it from the file).

    python scripts/bench_recovery.py --out runs/bench/recovery.jsonl
    python scripts/bench_recovery.py --recipes liger-gla,my-ablation.yaml --tokens 32768 --out runs/bench/a.jsonl
    python scripts/bench_recovery.py --recipes lizard+auto2 --out runs/bench/a.jsonl   # softmax_layers: {auto: 2}
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

from linearize.cli import DEFAULT_RECIPE

RECIPES = ["lizard", "liger-gla", "lolcats", "gla", "swa", "liger-gla-paper", "lizard-paper", "teacher+lora"]
BASELINE = DEFAULT_RECIPE  # teacher+lora uses the default recipe's stage-2 settings
# Recall inside and beyond the window (the offline pack's tasks, through lm-eval): passkeys ~30, 130-250 and
# 600-1000 tokens back, associative recall of 6 pairs (in the window) and of 48 (keys 140+ tokens back).
RECALL_TASKS = ["lin_passkey_64", "lin_passkey_256", "lin_passkey_1024", "lin_recall_6", "lin_recall_48"]


def recall_scores(model, tokenizer, limit: int) -> dict[str, float]:
    """Accuracy on :data:`RECALL_TASKS`, the first ``limit`` examples of each, run by lm-eval."""
    from linearize.evaluation import evaluate_model, headlines
    from linearize.task_pack import build_task_pack

    with tempfile.TemporaryDirectory() as tmp:
        pack = build_task_pack(Path(tmp) / "tasks", RECALL_TASKS)
        results = evaluate_model(model.float().eval(), tokenizer, RECALL_TASKS, pack, limit=limit, bootstrap_iters=0)
    return {h.task: h.value for h in headlines(results, RECALL_TASKS)}


def bench_recipe(name: str):
    """A shipped name or YAML path, optionally with ``+autoN``: the recipe with ``softmax_layers: {auto: N}``."""
    from linearize.recipes import Recipe, load_recipe, recipe_source

    base, _, auto = name.partition("+auto")
    recipe = load_recipe(base)
    if not auto:
        return recipe
    variant = Recipe.model_validate({**recipe.model_dump(), "name": name, "softmax_layers": {"auto": float(auto)}})
    object.__setattr__(variant, "_source", recipe_source(recipe))
    return variant


def run_one(name: str, tokens: int | None, eval_tokens: int, recall_examples: int) -> dict:
    """One recipe (or ``teacher+lora``) at the demo budget, as one row of the tables."""
    import torch
    from transformers import AutoModelForCausalLM

    import linearize  # noqa: F401  (registers the converted classes)
    from linearize.pipeline import apply_budget, run_pipeline

    t0 = time.perf_counter()
    if name == "teacher+lora":
        row = _teacher_lora(tokens, eval_tokens, recall_examples)
    else:
        recipe = bench_recipe(name)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model"
            result = run_pipeline(None, recipe, out, eval_tokens=eval_tokens, budget="demo", tokens=tokens,
                                  data="offline", run_dir=Path(tmp) / "run", other_source=True, progress=False)
            chosen = Path(tmp) / "run" / "softmax_layers.json"  # softmax_layers: {auto: N}
            kept = json.loads(chosen.read_text())["layers"] if chosen.is_file() else None
            recall = {}
            if recall_examples:
                from transformers import AutoTokenizer

                model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
                recall["recovered"] = recall_scores(model, AutoTokenizer.from_pretrained(out), recall_examples)
        training = result.training
        row = {
            "reports": {stage: {str(n): r.to_dict() for n, r in by.items()} for stage, by in result.reports.items()},
            "other_ppl": result.other_perplexity,
            "stage1_tokens": training.get("transfer", {}).get("tokens", 0),
            "stage2_tokens": training["recovery"]["tokens"],
            "train_seconds": sum(training[s]["seconds"] for s in ("transfer", "recovery") if s in training),
            "val_loss": [training["recovery"]["val_before"], training["recovery"]["val_after"]],
            "recall": recall,
            "softmax_layers": kept,
            "train_len": apply_budget(recipe, "demo", tokens).recovery.seq_len,
        }
    row.update(
        recipe=Path(name).stem if name.endswith((".yaml", ".yml")) else name,
        wall_seconds=time.perf_counter() - t0,
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        cpu_seconds=sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        threads=torch.get_num_threads(),
    )
    return row


def _teacher_lora(tokens: int | None, eval_tokens: int, recall_examples: int) -> dict:
    """The unconverted teacher, LoRA-tuned with the baseline recipe's demo stage 2 on the same data; and the
    teacher's recall scores, which the other rows are compared with."""
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

    reports, other_ppl, recall = {}, {}, {}
    reports["teacher"], other_ppl["teacher"] = measure(loaded.model)
    if recall_examples:
        recall["teacher"] = recall_scores(loaded.model, tok, recall_examples)
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
            "train_seconds": res.seconds, "val_loss": [res.val_before, res.val_after], "recall": recall}


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
    """Recovered perplexity over the teacher's, by position bucket at ``length`` tokens of context, and the worst
    bucket beyond the training length over the ratio inside it (the target: at most 1.1)."""
    from linearize.perplexity import PerplexityReport, length_stability

    buckets = next((list(r["reports"]["teacher"][length]["by_position"]) for r in rows
                    if length in r["reports"].get("teacher", {})), [])
    lines = ["| recipe | " + " | ".join(buckets) + " | worst beyond / inside |", "|" + "---|" * (len(buckets) + 2)]
    for r in rows:
        teacher, rec = r["reports"].get("teacher", {}).get(length), r["reports"].get("recovered", {}).get(length)
        if not teacher or not rec:
            continue
        cells = [f"{rec['by_position'][b]:.2f} ({rec['by_position'][b] / teacher['by_position'][b]:.2f}x)"
                 for b in buckets]
        stability = length_stability(PerplexityReport(**rec), PerplexityReport(**teacher), r.get("train_len", 256))
        cells.append(f"{stability[1] / stability[0]:.2f}" if stability else "-")
        lines.append(f"| {r['recipe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recall_table(rows: list[dict]) -> str:
    """Recall accuracy of each recovered model, with the teacher's (from the teacher+lora row) first."""
    teacher = next((r["recall"]["teacher"] for r in rows if r.get("recall", {}).get("teacher")), None)
    lines = ["| model | softmax layers kept | " + " | ".join(RECALL_TASKS) + " |", "|" + "---|" * (len(RECALL_TASKS) + 2)]
    measured = [("teacher", None, teacher)] if teacher else []
    measured += [(r["recipe"], r.get("softmax_layers"), r["recall"]["recovered"]) for r in rows
                 if r.get("recall", {}).get("recovered")]
    for label, kept, scores in measured:
        cells = [f"{scores[t]:.2f}" if t in scores else "-" for t in RECALL_TASKS]
        lines.append(f"| {label} | {', '.join(map(str, kept)) if kept else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help="comma-separated shipped names or YAML paths, each optionally +autoN (softmax_layers: "
                         "{auto: N}); 'teacher+lora' is the baseline")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per stage (default: the demo budget)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--recall-examples", type=int, default=50,
                    help="examples per recall task (0: no recall measurement)")
    ap.add_argument("--out", default="runs/bench/recovery.jsonl")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="only print the tables of --out")
    args = ap.parse_args()

    if args.one:
        row = run_one(args.one, args.tokens, args.eval_tokens, args.recall_examples)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    out = Path(args.out)
    if not args.table:
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.recipes.split(","):
            cmd = [sys.executable, __file__, "--one", name, "--eval-tokens", str(args.eval_tokens),
                   "--recall-examples", str(args.recall_examples)]
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
    print()
    print(recall_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
