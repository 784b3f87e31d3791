"""Decode speed and memory versus context length: teacher with its KV cache vs converted model.

    python scripts/bench_decode.py [--model SPEC] [--recipe liger-gla] [--contexts 512,1024,2048,4096,8192]
                                   [--steps 32] [--plot docs/img/decode_vs_context.png]

Each (model, context) runs in its own process so its peak memory (max RSS) is its own: the
prompt is prefilled in pieces of ``--prefill-chunk`` tokens, then ``--steps`` greedy tokens are
decoded one at a time and timed (after 4 warm-up steps). Prints a markdown table with the
machine and date and writes a PNG plot. Decoding speed does not depend on training, so the
freshly converted model stands for the recovered one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

WARMUP_STEPS = 4


def worker(model_dir: str, context: int, steps: int, prefill_chunk: int) -> dict:
    """Load one saved model, prefill ``context`` tokens, time ``steps`` decode steps."""
    import linearize  # noqa: F401 - registers the converted model classes
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size - 100, (1, context))
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        t0 = time.perf_counter()
        cache = None
        for start in range(0, context, prefill_chunk):
            out = model(ids[:, start : start + prefill_chunk], cache=cache, use_cache=True)
            cache = out.cache
        prefill_s = time.perf_counter() - t0
        token = out.logits[:, -1:].argmax(-1)
        for step in range(WARMUP_STEPS + steps):
            if step == WARMUP_STEPS:
                t0 = time.perf_counter()
            out = model(token, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        decode_s = time.perf_counter() - t0
    cache_bytes = cache.nbytes() if hasattr(cache, "nbytes") else sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    return {
        "context": context,
        "prefill_tok_s": context / prefill_s,
        "decode_tok_s": steps / decode_s,
        "ms_per_token": 1000 * decode_s / steps,
        "cache_mb": cache_bytes / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "weights_rss_mb": rss_loaded / 1024,
    }


def run_worker(model_dir: Path, context: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(model_dir), "--contexts", str(context),
           "--steps", str(args.steps), "--prefill-chunk", str(args.prefill_chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {model_dir} at {context}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in results.items():
        ctx = [r["context"] for r in rows]
        ax1.plot(ctx, [r["decode_tok_s"] for r in rows], marker="o", label=label)
        ax2.plot(ctx, [r["peak_rss_mb"] for r in rows], marker="o", label=f"{label}: peak RSS")
        ax2.plot(ctx, [r["cache_mb"] for r in rows], marker="x", linestyle="--", label=f"{label}: cache")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("decode tokens / s (batch 1)")
    ax2.set_ylabel("MiB")
    ax2.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="teacher (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--recipe", default="liger-gla")
    parser.add_argument("--contexts", default="512,1024,2048,4096,8192")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill-chunk", type=int, default=1024)
    parser.add_argument("--plot", default="docs/img/decode_vs_context.png")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, contexts[0], args.steps, args.prefill_chunk)))
        return

    from linearize.export import save_model
    from linearize.pipeline import convert
    from linearize.recipes import load_recipe
    from linearize.teachers import load_model

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_conversion import cpu_name

    teacher = load_model(args.model)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher.model.save_pretrained(Path(tmp) / "teacher")
        student = copy.copy(teacher)
        student.model = copy.deepcopy(teacher.model)
        convert(student, load_recipe(args.recipe))
        save_model(student.model, student.tokenizer, Path(tmp) / "student")
        del student, teacher.model
        labels = {"teacher (KV cache)": Path(tmp) / "teacher", f"converted {args.recipe}": Path(tmp) / "student"}
        for label, model_dir in labels.items():
            results[label] = []
            for context in contexts:
                row = run_worker(model_dir, context, args)
                results[label].append(row)
                print(f"{label:>22} ctx {context:>6}: {row['decode_tok_s']:.2f} tok/s, "
                      f"cache {row['cache_mb']:.1f} MiB, peak RSS {row['peak_rss_mb']:.0f} MiB", file=sys.stderr)

    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {date.today()}"
    print(f"\nDecode (batch 1, greedy, {args.steps} timed steps) vs context; {teacher.name}; {machine}\n")
    print("| model | context | decode tok/s | ms/token | prefill tok/s | cache MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for label, rows in results.items():
        for r in rows:
            print(f"| {label} | {r['context']} | {r['decode_tok_s']:.2f} | {r['ms_per_token']:.1f} | "
                  f"{r['prefill_tok_s']:.0f} | {r['cache_mb']:.1f} | {r['peak_rss_mb']:.0f} |")
    if args.plot:
        plot(results, Path(args.plot), f"{teacher.name}: decode vs context ({machine})")
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
