"""Evaluate models with the unmodified lm-eval harness, in memory, and compare them.

``linearize eval`` runs :func:`run_eval`: it resolves the task names (an unknown name fails
before any model is loaded), loads the first model (a model that cannot be loaded fails before
anything is written), writes the offline task pack (:mod:`linearize.task_pack`) into the run
directory, evaluates the teacher (optional) and each model with ``HFLM(pretrained=model,
tokenizer=tokenizer)`` + ``lm_eval.simple_evaluate``, and writes

    OUT/tasks/                 the offline pack (YAML + jsonl), usable with ``lm-eval --include_path``
    OUT/results/LABEL.json     lm-eval's raw results, one file per model
    OUT/samples/LABEL.jsonl    per-example inputs and outputs (when ``log_samples``)
    OUT/summary.json           the headline numbers
    OUT/report.md              teacher vs student table with recovery percentages

Each model gets a unique label (its directory name; the parent directory's name is added when
two models' directories share a name, and a number when that is not enough), which names its
column in the report and its results files.

lm-eval records the git commit of the working directory by running ``git``; here that runs with
its error output discarded, so evaluating outside a repository prints no ``fatal:`` line.

Task names: the pack's tasks (``lin_*``), ``pack`` (all of them), the papers' standard tasks
(``piqa arc_easy arc_challenge hellaswag winogrande mmlu``, reported with the papers' metrics;
MMLU 5-shot), ``paper`` (all six; they need the Hub's datasets), or any other lm-eval task.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LinearizeError
from .report import Headline, markdown_report
from .task_pack import PACK_GROUP, PACK_TASKS, build_task_pack

# The papers' tasks and metrics (SPEC 2.5): task -> (metric, num_fewshot)
PAPER_TASKS: dict[str, tuple[str, int]] = {
    "piqa": ("acc", 0),
    "arc_easy": ("acc", 0),
    "arc_challenge": ("acc_norm", 0),
    "hellaswag": ("acc_norm", 0),
    "winogrande": ("acc", 0),
    "mmlu": ("acc", 5),
}
ALIASES = {"pack": list(PACK_TASKS), PACK_GROUP: list(PACK_TASKS), "paper": list(PAPER_TASKS)}
DEFAULT_TASKS = "pack"
DEFAULT_LIMIT = 20
LOWER_IS_BETTER = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}


class UnknownTaskError(LinearizeError):
    """A task name neither in the pack, nor an alias, nor known to lm-eval."""


@functools.lru_cache(maxsize=1)
def lm_eval_task_names() -> frozenset[str]:
    """Every task name lm-eval's index knows (built once per process: indexing its task folders takes seconds)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def resolve_tasks(spec: str | list[str] | None) -> list[str]:
    """Expand a comma-separated task list (aliases included) into task names, checked.

    Names outside the pack and the papers' six are looked up in lm-eval's task index (a few
    seconds); anything unknown raises :class:`UnknownTaskError` listing what is available.
    """
    if spec is None:
        spec = DEFAULT_TASKS
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise UnknownTaskError("no tasks given")
    names: list[str] = []
    for item in items:
        for name in ALIASES.get(item, [item]):
            if name not in names:
                names.append(name)
    others = [n for n in names if n not in PACK_TASKS and n not in PAPER_TASKS]
    if others:
        known = lm_eval_task_names()
        unknown = [n for n in others if n not in known]
        if unknown:
            raise UnknownTaskError(
                f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"offline pack: {', '.join(PACK_TASKS)} (alias 'pack'); "
                f"papers' tasks: {', '.join(PAPER_TASKS)} (alias 'paper'); or any `lm-eval ls tasks` name"
            )
    return names


def headline_metric(task: str, task_results: dict) -> tuple[str, str, bool]:
    """(metric, results key, higher_is_better) reported for ``task``."""
    if task in PACK_TASKS:
        t = PACK_TASKS[task]
        return t.metric, f"{t.metric},{t.filter}", t.higher_is_better
    if task in PAPER_TASKS:
        metric = PAPER_TASKS[task][0]
        return metric, f"{metric},none", True
    for key in task_results:
        if "," in key and not key.split(",")[0].endswith("_stderr") and key.split(",")[0] != "alias":
            metric = key.split(",")[0]
            return metric, key, metric not in LOWER_IS_BETTER
    raise KeyError(f"no metric in results of {task}")


def headlines(results: dict, tasks: list[str]) -> list[Headline]:
    """The reported number of each requested task from lm-eval's ``results["results"]``."""
    out = []
    for task in tasks:
        task_results = results["results"].get(task)
        if task_results is None:
            continue
        metric, key, higher = headline_metric(task, task_results)
        value = task_results.get(key)
        stderr = task_results.get(key.replace(",", "_stderr,", 1))
        out.append(
            Headline(
                task=task,
                metric=metric,
                value=float(value) if value is not None else float("nan"),
                stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                higher_is_better=higher,
                n=int(results.get("n-samples", {}).get(task, {}).get("effective", 0)) or None,
            )
        )
    return out


def evaluate_model(
    model,
    tokenizer,
    tasks: list[str],
    pack_dir: str | Path | None = None,
    limit: float | None = DEFAULT_LIMIT,
    batch_size: int = 4,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
) -> dict:
    """Run lm-eval's ``simple_evaluate`` on an in-memory model; returns lm-eval's results dict.

    Pack tasks need ``pack_dir`` (from :func:`linearize.task_pack.build_task_pack`). Tasks with
    different few-shot settings (MMLU is 5-shot) run as separate ``simple_evaluate`` calls whose
    results are merged.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    needs_defaults = any(t not in PACK_TASKS for t in tasks)
    if any(t in PACK_TASKS for t in tasks) and pack_dir is None:
        raise LinearizeError("pack tasks need pack_dir (see linearize.task_pack.build_task_pack)")
    manager = TaskManager(include_path=str(pack_dir) if pack_dir else None, include_defaults=needs_defaults)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    by_shots: dict[int | None, list[str]] = {}
    for task in tasks:
        by_shots.setdefault(PAPER_TASKS[task][1] if task in PAPER_TASKS else None, []).append(task)
    merged: dict = {}
    for shots, names in by_shots.items():
        try:
            with quiet_git_hash():
                res = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=names,
                    num_fewshot=shots,
                    limit=limit,
                    task_manager=manager,
                    log_samples=log_samples,
                    bootstrap_iters=bootstrap_iters,
                )
        except ConnectionError as err:  # datasets could not reach the Hub
            raise LinearizeError(
                f"{err}: tasks {', '.join(names)} need their datasets from the Hub (or its cache); "
                "offline, use the task pack (--tasks pack)"
            ) from None
        if not merged:
            merged = res
            continue
        for key, value in res.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
    return merged


def git_commit_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without git's error output: the working directory's commit, or None."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        out = subprocess.run(
            ["git", "describe", "--always"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
    except OSError:  # no git
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return get_commit_from_path(Path.cwd())


@contextlib.contextmanager
def quiet_git_hash():
    """While evaluating, lm-eval's evaluator records the commit through :func:`git_commit_hash`.

    lm-eval runs ``git describe`` with the terminal as its stderr, which prints ``fatal: not a git
    repository`` whenever the working directory is not a repository. Only the evaluator module's
    reference is replaced, and only for the duration of the call; git and the environment are
    left as they are.
    """
    import lm_eval.evaluator as evaluator

    original = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = git_commit_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


@dataclass
class EvalRun:
    label: str
    spec: str
    results: dict
    headlines: list[Headline]
    seconds: float


def _json_default(obj):
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable(obj)


def label_slug(label: str) -> str:
    """The file name stem of a label's results (``results/SLUG.json``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"


def write_results(results: dict, out_dir: Path, label: str) -> Path:
    """Write lm-eval's raw results (samples separately, as jsonl) under ``out_dir``."""
    slug = label_slug(label)
    results = dict(results)
    samples = results.pop("samples", None)
    path = out_dir / "results" / f"{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    if samples:
        spath = out_dir / "samples" / f"{slug}.jsonl"
        spath.parent.mkdir(parents=True, exist_ok=True)
        with spath.open("w") as f:
            for task, rows in samples.items():
                for row in rows:
                    f.write(json.dumps({"task": task, **row}, default=_json_default) + "\n")
    return path


def _is_converted(model) -> bool:
    from .configuration_linearized import is_linearized_config

    return is_linearized_config(model.config)


def run_eval(
    models: list[str | None],
    tasks: str | list[str] | None = None,
    teacher: str | None = None,
    recipe: str | None = None,
    out_dir: str | Path = "runs/eval",
    limit: float | None = DEFAULT_LIMIT,
    batch_size: int = 4,
    device: str | None = None,
    log_samples: bool = True,
    log=print,
) -> str:
    """Evaluate the teacher (if given) and each model; write results and the report; return it.

    ``recipe``: convert each model that is not already converted with this recipe in memory
    (no training) before evaluating it, e.g. ``run_eval(["smollm2"], teacher="smollm2",
    recipe="liger-gla")`` compares the teacher with its converted student, loading it once.
    """
    from .recipes import load_recipe
    from .teachers import load_model

    names = resolve_tasks(tasks)  # fails before anything heavy
    recipe_obj = load_recipe(recipe) if recipe else None
    if not models:
        raise LinearizeError("no model to evaluate")
    out = Path(out_dir).expanduser().resolve()
    needs_pack = any(n in PACK_TASKS for n in names)
    pack_dir: Path | None = None  # written when the first model has loaded: a model that fails to load leaves no files
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None

    def evaluate(loaded, label, spec) -> EvalRun:
        nonlocal pack_dir
        if needs_pack and pack_dir is None:
            pack_dir = build_task_pack(out / "tasks")
        log(f"evaluating {label} on {', '.join(names)} (limit {limit}) ...")
        t0 = time.perf_counter()
        res = evaluate_model(
            loaded.model, loaded.tokenizer, names, pack_dir, limit=limit, batch_size=batch_size, log_samples=log_samples
        )
        seconds = time.perf_counter() - t0
        write_results(res, out, label)
        run = EvalRun(label, spec, res, headlines(res, names), seconds)
        log(f"  {label}: " + ", ".join(f"{h.task} {h.display()}" for h in run.headlines) + f" ({seconds:.0f}s)")
        return run

    runs: list[EvalRun] = []
    cache = {}
    used: set[str] = set()
    if teacher is not None:
        loaded = load_model(teacher, device=device)
        runs.append(evaluate(loaded, _unique_label("teacher", used), loaded.name))
        cache[teacher] = loaded
    shared = _shared_names(models)
    for spec in models:
        loaded = cache.pop(spec, None) or load_model(spec, device=device)
        label = _label(spec, loaded, with_parent=_dir_name(spec) in shared)
        if recipe_obj is not None and not _is_converted(loaded.model):
            from .pipeline import convert

            convert(loaded, recipe_obj)
            label = f"{label} + {recipe_obj.name} (converted)"
        runs.append(evaluate(loaded, _unique_label(label, used), loaded.name))
        del loaded

    report = markdown_report(
        [(r.label, r.headlines) for r in runs],
        teacher_label="teacher" if teacher is not None else None,
        meta={
            "limit": limit,
            "batch size": batch_size,
            "seconds": {r.label: round(r.seconds, 1) for r in runs},
        },
    )
    (out / "report.md").write_text(report)
    summary = {
        "tasks": names,
        "limit": limit,
        "models": [
            {"label": r.label, "model": r.spec, "seconds": r.seconds, "headlines": [h.__dict__ for h in r.headlines]}
            for r in runs
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out / 'report.md'} and raw results under {out / 'results'}")
    return report


def _dir_name(spec: str | None) -> str | None:
    if spec is None or spec == "smollm2":
        return None
    return Path(str(spec).rstrip("/")).name or str(spec)


def _shared_names(specs: list[str | None]) -> set[str]:
    """Directory names that more than one of ``specs`` has (``A/model`` and ``B/model``)."""
    names = [_dir_name(s) for s in specs if _dir_name(s) is not None]
    return {n for n in names if names.count(n) > 1}


def _label(spec: str | None, loaded, with_parent: bool = False) -> str:
    """A model's name in the report: its directory's (or Hub id's) last component, ``PARENT/NAME`` when asked."""
    if spec is None or spec == "smollm2":
        return loaded.name.split("/")[-1]
    path = Path(str(spec).rstrip("/"))
    name = path.name or str(spec)
    if with_parent:
        parent = Path(str(spec)).expanduser().resolve().parent.name if path.exists() else path.parent.name
        if parent:
            return f"{parent}/{name}"
    return name


def _unique_label(label: str, used: set[str]) -> str:
    """``label``, or ``label-2``, ``label-3``, ... : no two labels (nor their results file names) coincide."""
    candidate, n = label, 1
    while candidate in used or label_slug(candidate) in {label_slug(u) for u in used}:
        n += 1
        candidate = f"{label}-{n}"
    used.add(candidate)
    return candidate
