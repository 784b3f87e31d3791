#!/usr/bin/env python
"""Stage-2 ablation on CPU: one recipe's recovery settings changed one at a time, on the offline teacher.

The teacher is loaded, converted and taken through the recipe's demo stage 1 once. Every variant then starts
from a copy of that model, runs stage 2 with the recipe's demo settings, one of them changed, for the same
number of tokens, and is measured on held-out text at 512 and 2048 tokens of context (ratio to the teacher,
overall and beyond the training length). ``no stage 1`` starts from the converted model instead. Rows are
appended to a JSONL file as they finish and the table is printed at the end (``--table`` reprints it).

    python scripts/ablate_recovery.py --recipe lizard --tokens 8192 --out runs/bench/ablation.jsonl
    python scripts/ablate_recovery.py --variants base,"loss kd" --out runs/bench/a.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

from linearize.cli import DEFAULT_RECIPE

# Changes to the recipe's demo stage-2 settings (``lora`` replaces its keys one by one).
VARIANTS: dict[str, dict] = {
    "base": {},
    "loss kd": {"loss": "kd"},
    "loss mix": {"loss": "mix"},
    "lr / 3": {"lr_factor": 1 / 3},
    "lr x 3": {"lr_factor": 3.0},
    "cosine + 10% warm-up": {"schedule": "cosine", "warmup_ratio": 0.1},
    "4 sequences per step": {"batch_size": 4},
    "LoRA rank 16": {"lora": {"rank": 16}},
    "LoRA on q k v o": {"lora": {"targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
    "training length 512": {"seq_len": 512},
    "no stage 1": {"no_stage_1": True},
}
LENGTHS = (512, 2048)


def stage2_settings(recovery, change: dict):
    """The recipe's demo stage-2 settings with ``change`` applied."""
    values = recovery.model_dump()
    for key, value in change.items():
        if key == "lr_factor":
            values["lr"] = recovery.lr * value
        elif key == "lora":
            values["lora"] = {**values["lora"], **value}
        elif key != "no_stage_1":
            values[key] = value
    return type(recovery).model_validate(values)


def ratios(report, teacher) -> dict:
    return {"overall": report.overall / teacher.overall,
            "by_position": {k: v / teacher.by_position[k] for k, v in report.by_position.items()}}


def run(recipe_name: str, names: list[str], tokens: int, eval_tokens: int, out: Path,
        transfer_tokens: int | None = None) -> None:
    import torch

    from linearize.data import prepare_data
    from linearize.perplexity import perplexity_report
    from linearize.pipeline import apply_budget, convert, heldout_tokens
    from linearize.recipes import load_recipe
    from linearize.teachers import load_model
    from linearize.training import StageConfig, apply_lora, freeze_for_transfer, merge_lora, train_stage

    recipe = apply_budget(load_recipe(recipe_name), "demo")
    if transfer_tokens and recipe.transfer is not None:
        recipe = recipe.model_copy(update={"transfer": recipe.transfer.model_copy(update={"tokens": transfer_tokens})})
    loaded = load_model(None)
    tok = loaded.tokenizer
    held = heldout_tokens(tok, eval_tokens)
    teacher = {n: perplexity_report(loaded.model, held, n, desc=f"teacher @{n}") for n in LENGTHS}
    convert(loaded, recipe)
    converted = loaded.model
    data: dict[int, object] = {}

    def training_data(seq_len: int):
        if seq_len not in data:
            data[seq_len] = prepare_data(tok, "offline", seq_len, "text", recipe.data.validation_fraction, None,
                                         recipe.seed, max_tokens=max(tokens, recipe.transfer.tokens if recipe.transfer
                                                                     else 0))
        return data[seq_len]

    after_stage_1 = None  # the weights after stage 1 (None: the converted model's)
    stage_1 = {"tokens": 0, "seconds": 0.0}
    if recipe.transfer is not None:
        model = copy.deepcopy(converted)
        if freeze_for_transfer(model) > 0:
            ts = recipe.transfer
            cfg = StageConfig.from_settings("transfer", ts, seed=recipe.seed)
            with tempfile.TemporaryDirectory() as run_dir:
                res = train_stage(model, cfg, training_data(ts.seq_len).train, None, run_dir)
            stage_1 = {"tokens": res.tokens, "seconds": res.seconds}
            after_stage_1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        del model
    for name in names:
        change = VARIANTS[name]
        rs = stage2_settings(recipe.recovery, change)
        model = copy.deepcopy(converted)  # the converted model is never trained: copies start from it
        if after_stage_1 is not None and not change.get("no_stage_1"):
            model.load_state_dict(after_stage_1)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(recipe.seed)
        peft_model = apply_lora(model, rs.lora)
        cfg = StageConfig.from_settings("recovery", rs, seed=recipe.seed, tokens=tokens, checkpoint_every=0)
        with tempfile.TemporaryDirectory() as run_dir:
            res = train_stage(peft_model, cfg, training_data(rs.seq_len).train, None, run_dir)
        recovered = merge_lora(peft_model)
        reports = {n: perplexity_report(recovered, held, n, desc=f"{name} @{n}") for n in LENGTHS}
        row = {"recipe": recipe.name, "variant": name, "change": change, "stage1": stage_1,
               "stage2_tokens": res.tokens, "seq_len": rs.seq_len, "train_seconds": res.seconds,
               "final_loss": res.final_loss, "eval_tokens": eval_tokens,
               "teacher": {str(n): r.to_dict() for n, r in teacher.items()},
               "recovered": {str(n): r.to_dict() for n, r in reports.items()},
               "ratio": {str(n): ratios(reports[n], teacher[n]) for n in LENGTHS}}
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)


def table(rows: list[dict]) -> str:
    """Ratio to the teacher at 512 and 2048, and beyond the training length over inside it (at 2048)."""
    from linearize.perplexity import PerplexityReport, length_stability

    lines = ["| recipe | variant | stage 1 / 2 tokens | ratio @512 | ratio @2048 | 0-64 / 64-256 / 256-1024 / 1024-2048 "
             "| worst beyond / inside | train s |", "|" + "---|" * 8]
    for r in rows:
        pos = r["ratio"]["2048"]["by_position"]
        stability = length_stability(PerplexityReport(**r["recovered"]["2048"]), PerplexityReport(**r["teacher"]["2048"]),
                                     r["seq_len"])
        growth = stability[1] / stability[0] if stability else None
        cells = [r["recipe"], r["variant"], f"{r['stage1']['tokens']:,} / {r['stage2_tokens']:,}",
                 f"{r['ratio']['512']['overall']:.2f}x", f"{r['ratio']['2048']['overall']:.2f}x",
                 " / ".join(f"{v:.2f}" for v in pos.values()), f"{growth:.2f}" if growth else "-",
                 f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, help="shipped name or YAML path")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--tokens", type=int, default=8192, help="stage-2 tokens of every variant")
    ap.add_argument("--transfer-tokens", type=int, default=None, help="stage-1 tokens (default: the recipe's demo)")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--out", default="runs/bench/ablation.jsonl")
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.table:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            print(f"error: unknown variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}", file=sys.stderr)
            return 2
        out.parent.mkdir(parents=True, exist_ok=True)
        run(args.recipe, names, args.tokens, args.eval_tokens, out, args.transfer_tokens)
    print(table([json.loads(x) for x in out.read_text().splitlines() if x.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
