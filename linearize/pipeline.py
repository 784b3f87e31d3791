"""The main job: load the teacher, convert it, measure, save.

``run_pipeline`` is what ``linearize MODEL`` runs. Each step reports progress; the result holds
every number measured so the CLI can print a table and the report can be saved with the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .offline_text import heldout_documents
from .perplexity import perplexity, tokenize_documents
from .recipes import Recipe, recipe_source
from .surgery import check_supported, linearize_model
from .teachers import LoadedModel, load_model


@dataclass
class PipelineResult:
    teacher: str
    recipe: str
    out_dir: Path | None
    perplexity: dict[str, float] = field(default_factory=dict)  # stage -> held-out perplexity
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time

    def to_dict(self) -> dict:
        return {
            "teacher": self.teacher,
            "recipe": self.recipe,
            "heldout_perplexity": self.perplexity,
            "seconds": self.seconds,
        }

    def table(self) -> str:
        rows = [("model", "held-out ppl")] + [(k, f"{v:.2f}") for k, v in self.perplexity.items()]
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b:>12}" for a, b in rows]
        lines.insert(1, "-" * (width + 14))
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return "\n".join(lines + [f"time: {times}"])


def convert(loaded: LoadedModel, recipe: Recipe) -> LoadedModel:
    """Convert a loaded teacher in place with ``recipe`` (checked against the model first)."""
    check_supported(loaded.model)
    recipe.check_model(loaded.model.config.num_hidden_layers, recipe_source(recipe))
    linearize_model(
        loaded.model, recipe.attention.to_spec(), recipe.softmax_layers, recipe=recipe.name, teacher=loaded.name
    )
    return loaded


def heldout_tokens(tokenizer, max_tokens: int):
    return tokenize_documents(tokenizer, heldout_documents(), max_tokens)


def run_pipeline(
    model_spec: str | None,
    recipe: Recipe,
    out_dir: str | Path | None,
    eval_tokens: int = 4096,
    eval_seq_len: int = 512,
    log=print,
) -> PipelineResult:
    """Load -> teacher perplexity -> convert -> student perplexity -> save."""
    from .export import save_model

    t0 = time.perf_counter()
    log(f"loading {model_spec or 'the offline default teacher'} ...")
    loaded = load_model(model_spec)
    check_supported(loaded.model)
    recipe.check_model(loaded.model.config.num_hidden_layers, recipe_source(recipe))
    result = PipelineResult(teacher=loaded.name, recipe=recipe.name, out_dir=Path(out_dir) if out_dir else None)
    result.seconds["load"] = time.perf_counter() - t0

    tokens = heldout_tokens(loaded.tokenizer, eval_tokens)
    t0 = time.perf_counter()
    result.perplexity["teacher"] = perplexity(loaded.model, tokens, eval_seq_len, desc="teacher perplexity")
    result.seconds["eval teacher"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    convert(loaded, recipe)
    result.seconds["convert"] = time.perf_counter() - t0
    log(f"converted {len(loaded.model.model.layers) - len(recipe.softmax_layers)} layers with recipe {recipe.name}")

    t0 = time.perf_counter()
    result.perplexity["converted"] = perplexity(loaded.model, tokens, eval_seq_len, desc="converted perplexity")
    result.seconds["eval converted"] = time.perf_counter() - t0

    if out_dir is not None:
        t0 = time.perf_counter()
        save_model(loaded.model, loaded.tokenizer, out_dir, report=result.to_dict())
        result.seconds["save"] = time.perf_counter() - t0
        log(f"saved to {Path(out_dir).resolve()}")
    return result
