"""The main job: load the teacher, convert it, recover it, measure, save.

``run_pipeline`` is what ``linearize MODEL`` (and ``accelerate launch -m linearize.cli train``)
runs: load -> teacher perplexity -> convert -> converted perplexity -> stage 1 attention transfer
(recipes with new parameters) -> stage 2 LoRA recovery, merged -> recovered perplexity -> save.
The result holds every number measured so the CLI can print a table and the report can be saved
with the model.

Budgets: ``paper`` trains what the recipe says (~20M tokens per stage, the recipe's dataset);
``demo`` is a CPU-sized run on the offline corpus that finishes in minutes on two cores;
``auto`` (the default) is ``paper`` when a GPU is present and ``demo`` otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LinearizeError, OutputError, ResumeError, UnsupportedModelError
from .offline_text import heldout_documents
from .outputs import RUN_FILES, OutputDir, check_distinct, check_output, describe_entries, locked
from .perplexity import (
    EVAL_LENGTHS,
    PerplexityReport,
    length_stability,
    perplexity,
    perplexity_report,
    tokenize_documents,
)
from .recipes import Recipe, recipe_source
from .report import format_number
from .surgery import check_supported, linearize_model
from .teachers import LoadedModel, load_model

BUDGETS = ("auto", "demo", "paper")
# CPU demo: sized for the offline SmolLM2-135M on 2 cores (~190 training tok/s idle): stage 2 is 64 steps,
# under one epoch of the offline corpus, ~6 minutes; the whole job stays well under 15 minutes.
DEMO_BUDGET = {
    "transfer": {"tokens": 16 * 1024, "seq_len": 256, "batch_size": 4, "checkpoint_every": 8},
    "recovery": {"tokens": 64 * 1024, "seq_len": 256, "batch_size": 4, "checkpoint_every": 16},
}


@dataclass
class PipelineResult:
    teacher: str
    recipe: str
    out_dir: Path | None
    perplexity: dict[str, float] = field(default_factory=dict)  # stage -> held-out ppl at the first eval length
    reports: dict[str, dict[int, PerplexityReport]] = field(default_factory=dict)  # stage -> length -> report
    other_perplexity: dict[str, float] = field(default_factory=dict)  # stage -> ppl on a second source
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time
    training: dict = field(default_factory=dict)  # stage -> StageResult dict, plus data/budget
    run_dir: Path | None = None
    train_len: int | None = None  # tokens of context stage 2 trained at (None: not trained)

    def to_dict(self) -> dict:
        out = {
            "teacher": self.teacher,
            "recipe": self.recipe,
            "heldout_perplexity": self.perplexity,
            "heldout_perplexity_by_length": {
                stage: {str(length): report.to_dict() for length, report in by_length.items()}
                for stage, by_length in self.reports.items()
            },
            "seconds": self.seconds,
        }
        if self.other_perplexity:
            out["other_source_perplexity"] = self.other_perplexity
        if self.training:
            out["training"] = self.training
        return out

    def table(self) -> str:
        """Held-out perplexity per model at each context length (and on the second source), then by
        position at the longest length, then the time of each step."""
        lengths = sorted({length for by_length in self.reports.values() for length in by_length})
        header = ("model", *(f"held-out ppl @{length}" for length in lengths))
        header += ("licence-text ppl",) if self.other_perplexity else ()
        rows = [header]
        for stage, by_length in self.reports.items():
            row = (stage, *(format_number(by_length[n].overall) if n in by_length else "" for n in lengths))
            if self.other_perplexity:
                other = self.other_perplexity.get(stage)
                row += ("" if other is None else format_number(other),)
            rows.append(row)
        parts = [_aligned(rows)]
        if lengths:
            longest = lengths[-1]
            buckets = next(iter(r[longest].by_position for r in self.reports.values() if longest in r), {})
            rows = [(f"by position @{longest}", *buckets)]
            for stage, by_length in self.reports.items():
                if longest in by_length:
                    rows.append((stage, *(format_number(v) for v in by_length[longest].by_position.values())))
            parts.append(_aligned(rows))
            teacher, recovered = (self.reports.get(s, {}).get(longest) for s in ("teacher", "recovered"))
            stability = length_stability(recovered, teacher, self.train_len) if teacher and recovered and self.train_len else None
            if stability:
                parts[-1] += (f"\nrecovered / teacher: {stability[0]:.2f}x inside the training length "
                              f"({self.train_len} tokens), {stability[1]:.2f}x in the worst bucket beyond it")
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return "\n\n".join(parts) + f"\ntime: {times}"


def _aligned(rows: list[tuple[str, ...]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def check_teacher(loaded: LoadedModel) -> None:
    """A teacher is a supported family's softmax model, not a model converted already."""
    check_supported(loaded.model)
    linearization = getattr(loaded.model.config, "linearization", None)
    if linearization is not None:
        raise UnsupportedModelError(
            f"{type(loaded.model).__name__} is already linearized (recipe {linearization.get('recipe')!r}): "
            "give the teacher it was converted from"
        )


def convert(loaded: LoadedModel, recipe: Recipe) -> LoadedModel:
    """Convert a loaded teacher in place with ``recipe`` (checked against the model first)."""
    check_teacher(loaded)
    recipe.check_model(loaded.model.config.num_hidden_layers, recipe_source(recipe))
    # A local teacher directory is recorded by its path in memory (the model card reads its licence from its
    # README); save_model writes its name only. Hub ids (the offline default's too) are recorded as they are.
    local = getattr(loaded, "local_path", None)
    teacher = str(local) if local is not None and Path(local).is_dir() else loaded.name
    linearize_model(
        loaded.model, recipe.attention.to_spec(), recipe.fixed_softmax_layers, recipe=recipe.name, teacher=teacher,
        seed=recipe.seed,
    )
    return loaded


def _merged_from_shards(peft_model, model_spec, recipe: Recipe, is_main: bool, device, auto_layers=None):
    """The merged model after FSDP training, on the main process (None elsewhere).

    FSDP2 shards parameters in place, so the trained model cannot simply be unwrapped: its full state
    (gathered from every process) is loaded into a freshly converted copy, whose adapters are then merged."""
    from .training import apply_lora, full_state_dict, merge_lora

    full = full_state_dict(peft_model)
    if not is_main:
        return None
    plain = convert(load_model(model_spec), recipe).model
    if auto_layers:
        from .layer_selection import restore_softmax_layers

        restore_softmax_layers(plain, auto_layers)
    for p in plain.parameters():
        p.requires_grad_(False)
    plain_peft = apply_lora(plain, recipe.recovery.lora)
    plain_peft.load_state_dict(full, strict=True)
    return merge_lora(plain_peft).to(device)


AUTO_LAYERS_FILE = "softmax_layers.json"  # in the run directory: the layers softmax_layers: auto kept
AUTO_LAYERS_WINDOWS = 16  # validation windows the per-layer transfer error is measured on


def choose_and_restore_softmax_layers(model, recipe: Recipe, data, run_dir: Path, say, is_main: bool,
                                      sync=lambda: None) -> list[int]:
    """``softmax_layers: {auto: N}``: measure every linearized layer's relative transfer error on validation
    windows, give the N worst back the teacher's attention, and record the choice in the run directory (a
    resumed run reuses it, so its stage-2 checkpoints fit the model)."""
    import json

    from .layer_selection import choose_softmax_layers, relative_transfer_errors, restore_softmax_layers

    path = Path(run_dir) / AUTO_LAYERS_FILE
    chosen_before = path.is_file()
    sync()  # every process has looked before the main one writes
    if chosen_before:
        layers = json.loads(path.read_text())["layers"]
        say(f"softmax_layers auto: layers {layers}, as chosen before this resume")
    else:
        windows = data.validation.input_ids[:AUTO_LAYERS_WINDOWS]
        if len(windows) == 0:
            windows = data.train.input_ids[:AUTO_LAYERS_WINDOWS]
        errors = relative_transfer_errors(model, windows)
        count = recipe.auto_softmax_layers.count(len(model.model.layers))
        layers = choose_softmax_layers(errors, count)
        if is_main:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"layers": layers, "relative_transfer_error": errors}, indent=1))
            tmp.replace(path)
        worst = ", ".join(f"{i} ({errors[i]:.3g})" for i in layers)
        say(f"softmax_layers auto: keeping softmax attention in layers {worst} (relative transfer error; "
            f"median of all layers {sorted(errors.values())[len(errors) // 2]:.3g})")
    restore_softmax_layers(model, layers)
    return layers


def heldout_tokens(tokenizer, max_tokens: int):
    return tokenize_documents(tokenizer, heldout_documents(), max_tokens)


def resolve_budget(budget: str | None) -> str:
    budget = budget or "auto"
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}")
    if budget == "auto":
        return "paper" if torch.cuda.is_available() else "demo"
    return budget


def apply_budget(recipe: Recipe, budget: str, tokens: int | None = None) -> Recipe:
    """The recipe with its stage sizes replaced by the budget's (``paper`` keeps them).

    ``tokens`` overrides the token count of every stage.
    """
    budget = resolve_budget(budget)
    updates = {}
    for stage in ("transfer", "recovery"):
        settings = getattr(recipe, stage)
        if settings is None:
            continue
        if budget == "demo":
            settings = recipe.demo.apply(stage, settings, DEMO_BUDGET[stage])
        if tokens is not None:
            settings = settings.model_copy(update={"tokens": int(tokens)})
        updates[stage] = settings
    new = recipe.model_copy(update=updates)
    source = recipe_source(recipe)
    if source is not None:
        object.__setattr__(new, "_source", source)
    return new


def default_run_dir(out_dir: str | Path) -> Path:
    """Checkpoints, metrics.jsonl and loss.png live beside the model: ``<out>.train/``."""
    out = Path(out_dir).expanduser()
    return out.with_name(out.name + ".train")


def check_budget(recipe: Recipe, tokens: int | None) -> None:
    """Every stage trains at least one optimizer step (a smaller budget is a mistake, not rounded up)."""
    for stage in ("transfer", "recovery"):
        settings = getattr(recipe, stage)
        if settings is None:
            continue
        per_step = settings.batch_size * settings.seq_len
        if settings.tokens < per_step:
            what = f"--tokens {tokens:,}" if tokens is not None else f"{stage}.tokens {settings.tokens:,}"
            raise LinearizeError(
                f"{what} is less than one optimizer step of stage {stage} ({settings.batch_size} "
                f"sequence{'s' if settings.batch_size != 1 else ''} x "
                f"{settings.seq_len} tokens = {per_step:,} tokens); give at least {per_step:,}"
            )


def describe_checkpoints(run_dir: Path) -> str | None:
    """'transfer complete, recovery at step 16/64' for the checkpoints in ``run_dir`` (None: none)."""
    from .training import STAGES, read_checkpoint_meta

    parts = []
    for stage in STAGES:
        meta = read_checkpoint_meta(run_dir, stage)
        if meta is not None:
            parts.append(f"{stage} complete" if meta.get("complete") else
                         f"{stage} at step {meta['step']}/{meta.get('steps', '?')}")
    return ", ".join(parts) or None


def prepare_run_dir(run: OutputDir, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an earlier run's checkpoints unless told how (``--resume`` or ``--overwrite``)."""
    if not run.path.is_dir():
        return
    earlier = describe_checkpoints(run.path)
    stale = [run.path / name for name in RUN_FILES if (run.path / name).exists()]
    if resume or not stale:
        return
    if not overwrite:
        state = f"checkpoints of an earlier run ({earlier})" if earlier else f"an earlier run ({describe_entries(stale)})"
        raise OutputError(
            f"{run.flag} {run.path} holds {state}; continue it with --resume, or start over with --overwrite"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's files (only the ones a run writes) -- ``--overwrite`` asked for it."""
    for name in RUN_FILES:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def provenance(loaded: LoadedModel, data_source: str, recipe: Recipe, budget: str) -> dict:
    """What a run is trained from; every checkpoint records it and ``--resume`` must match it."""
    from .data import data_identity
    from .teachers import teacher_identity

    recipe_json = recipe.model_dump_json()
    return {
        "teacher": teacher_identity(loaded),
        "data": data_identity(data_source),
        "recipe": {"name": recipe.name, "sha256": hashlib.sha256(recipe_json.encode()).hexdigest()[:16]},
        "budget": {"budget": budget, **{
            stage: getattr(recipe, stage).tokens for stage in ("transfer", "recovery") if getattr(recipe, stage)
        }},
    }


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def check_resume(run_dir: Path, current: dict) -> bool:
    """Raise ResumeError naming each difference between the checkpoints' provenance and ``current``.

    Returns False when there is nothing to resume."""
    from .training import STAGES, read_checkpoint_meta

    found = False
    for stage in STAGES:
        if (Path(run_dir) / stage / "checkpoint" / "meta.json").is_file():
            raise ResumeError(f"{run_dir}/{stage}/checkpoint was written by an earlier linearize version and cannot be "
                              "resumed; start over with --overwrite")
        meta = read_checkpoint_meta(run_dir, stage)
        if meta is None:
            continue
        found = True
        recorded = meta.get("provenance")
        if recorded is None:
            raise ResumeError(f"{run_dir}/{stage}: the checkpoint does not record what it was trained from; "
                              "start over with --overwrite")
        old, new = _flatten(recorded), _flatten(current)
        diffs = [f"{key}: {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new))
                 if old.get(key) != new.get(key)]
        if diffs:
            raise ResumeError(
                f"--resume: the checkpoints in {run_dir} were trained from other inputs ({'; '.join(diffs)}); "
                "resume with the same ones, or start over with --overwrite"
            )
    return found


def teacher_location(model_spec: str | None) -> Path | None:
    """The local file or directory of a teacher, if it is local (what an output must never replace)."""
    from .teachers import DEFAULT_TEACHER, default_teacher_path

    if model_spec in (None, DEFAULT_TEACHER):
        try:
            return default_teacher_path()
        except LinearizeError:
            return None
    path = Path(model_spec).expanduser()
    return path if path.exists() else None


def check_outputs(model_spec, out_dir, run_dir, *, train: bool, overwrite: bool) -> list[OutputDir]:
    """Every output location of the main job, checked before anything is loaded (see linearize.outputs)."""
    teacher = teacher_location(model_spec)
    protected = {"the teacher": teacher} if teacher is not None else {}
    outputs = []
    if out_dir is not None:
        outputs.append(check_output(out_dir, "model", "--out", overwrite=overwrite, protected=protected))
    if train and (run_dir is not None or out_dir is not None):
        outputs.append(check_output(run_dir if run_dir is not None else default_run_dir(out_dir), "run",
                                    "--run-dir" if run_dir is not None else "the run directory (--run-dir)",
                                    overwrite=overwrite, protected=protected))
    check_distinct(*outputs)
    return outputs


def format_loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def run_pipeline(
    model_spec: str | None,
    recipe: Recipe,
    out_dir: str | Path | None,
    eval_tokens: int = 8192,
    eval_lengths: tuple[int, ...] = EVAL_LENGTHS,
    log=print,
    *,
    data: str | None = None,
    budget: str | None = "auto",
    tokens: int | None = None,
    resume: bool = False,
    run_dir: str | Path | None = None,
    train: bool = True,
    other_source: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    dtype: str | None = None,
) -> PipelineResult:
    """Load -> teacher ppl -> convert -> converted ppl -> stage 1 -> stage 2 -> recovered ppl -> save.

    ``data``: ``offline``, a local file/directory or a Hub dataset id; default: the offline corpus
    for the demo budget, the recipe's dataset otherwise. ``other_source`` also measures perplexity
    on licence texts (a second held-out source, see :func:`linearize.data.license_documents`).
    ``out_dir`` / ``run_dir`` are checked and locked before the model loads (:mod:`linearize.outputs`);
    ``overwrite`` allows replacing what is there, ``resume`` continues the run directory's checkpoints
    (which must have been trained from the same teacher, data, recipe and budget). ``dtype`` is the
    saved weights' dtype (default: the teacher's).
    """
    from .data import check_source
    from .training import make_accelerator

    budget = resolve_budget(budget)
    recipe = apply_budget(recipe, budget, tokens)
    if train:
        check_budget(recipe, tokens)
    data_source = data or ("offline" if budget == "demo" else recipe.data.dataset)
    is_main = os.environ.get("RANK", "0") == "0"
    outputs = check_outputs(model_spec, out_dir, run_dir, train=train, overwrite=overwrite) \
        if is_main else []
    if train:
        check_source(data_source)  # a missing or empty data file fails before the model loads
    with locked(*outputs):
        for run in (o for o in outputs if o.kind == "run"):
            prepare_run_dir(run, resume, overwrite)
        accelerator = make_accelerator() if train else None
        return _run_locked(model_spec, recipe, out_dir, run_dir, eval_tokens, eval_lengths, log, data_source, budget,
                           resume, train, other_source, progress, overwrite, dtype, accelerator)


def _run_locked(model_spec, recipe, out_dir, run_dir, eval_tokens, eval_lengths, log, data_source, budget, resume,
                train, other_source, progress, overwrite, dtype, accelerator) -> PipelineResult:
    from .data import license_documents, prepare_data
    from .export import save_model
    from .outputs import write_marker
    from .training import (
        StageConfig,
        apply_lora,
        freeze_for_transfer,
        is_sharded,
        merge_lora,
        train_stage,
    )

    is_main = accelerator is None or accelerator.is_main_process
    say = log if is_main else (lambda *a, **k: None)
    t0 = time.perf_counter()
    say(f"loading {model_spec or 'the offline default teacher'} ...")
    loaded = load_model(model_spec)
    check_teacher(loaded)
    recipe.check_model(loaded.model.config.num_hidden_layers, recipe_source(recipe))
    result = PipelineResult(teacher=loaded.name, recipe=recipe.name, out_dir=Path(out_dir) if out_dir else None)
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    loaded.model.to(device)
    result.seconds["load"] = time.perf_counter() - t0

    training_data, origin = None, None
    if train:
        run_dir = Path(run_dir) if run_dir else (default_run_dir(out_dir) if out_dir else Path(tempfile.mkdtemp()))
        result.run_dir = run_dir
        origin = provenance(loaded, data_source, recipe, budget)
        if resume and not check_resume(run_dir, origin):
            say(f"--resume: no checkpoint in {run_dir} yet; starting from the beginning")
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                clear_run_dir(run_dir)  # only reached when empty or --overwrite (see prepare_run_dir)
            write_marker(run_dir, "run", list(RUN_FILES))
        rs, ts = recipe.recovery, recipe.transfer
        shared = ts is not None and ts.seq_len == rs.seq_len  # stage 1 trains on the same windows
        t0 = time.perf_counter()
        training_data = prepare_data(
            loaded.tokenizer, data_source, rs.seq_len, recipe.data.template, recipe.data.validation_fraction,
            recipe.data.max_samples, recipe.seed, max_tokens=max(rs.tokens, ts.tokens if shared else 0),
            progress=progress and is_main,
        )
        say(f"data: {training_data.describe()}")
        result.seconds["data"] = time.perf_counter() - t0
        result.training["budget"] = budget
        result.training["data"] = training_data.describe()

    tokens_eval = heldout_tokens(loaded.tokenizer, eval_tokens)
    # Context lengths the text and the model allow (a short --eval-tokens measures at that length).
    longest = min(len(tokens_eval), getattr(loaded.model.config, "max_position_embeddings", None) or len(tokens_eval))
    eval_lengths = tuple(n for n in eval_lengths if n <= longest) or (longest,)
    other_tokens = tokenize_documents(loaded.tokenizer, license_documents(), eval_tokens) if other_source else None

    def measure(name: str) -> None:
        t = time.perf_counter()
        show = progress and is_main
        reports = {n: perplexity_report(loaded.model, tokens_eval, n, desc=f"{name} perplexity @{n}", progress=show)
                   for n in eval_lengths}
        result.reports[name] = reports
        result.perplexity[name] = reports[eval_lengths[0]].overall
        if other_tokens is not None:
            result.other_perplexity[name] = perplexity(loaded.model, other_tokens, eval_lengths[0],
                                                       desc=f"{name} perplexity (licences)", progress=show)
        result.seconds[f"eval {name}"] = time.perf_counter() - t
        at = ", ".join(f"{format_number(r.overall)} @{n}" for n, r in reports.items())
        other = result.other_perplexity.get(name)
        extra = f", licence text {format_number(other)}" if other is not None else ""
        say(f"{name} perplexity: held-out {at}{extra}")

    measure("teacher")
    t0 = time.perf_counter()
    convert(loaded, recipe)
    result.seconds["convert"] = time.perf_counter() - t0
    converted = len(loaded.model.model.layers) - len(recipe.fixed_softmax_layers)
    say(f"converted {converted} layers with recipe {recipe.name}")
    measure("converted")

    if train:
        accelerator.wait_for_everyone()

        def run_stage(label: str, trained, cfg, stage_data):
            """Train one stage, recording its wall time and result under the stage's name."""
            t0 = time.perf_counter()
            res = train_stage(trained, cfg, stage_data.train, stage_data.validation, run_dir, accelerator,
                              resume=resume, log=say, progress=progress, provenance=origin)
            result.seconds[label] = time.perf_counter() - t0
            result.training[cfg.stage] = res.to_dict()
            return res

        model = loaded.model
        auto_layers = None
        # Stage 1: attention transfer (only where the conversion added parameters).
        if recipe.transfer is not None and freeze_for_transfer(model) > 0:
            ts = recipe.transfer
            cfg = StageConfig.from_settings("transfer", ts, seed=recipe.seed)
            stage_data = training_data
            if ts.seq_len != recipe.recovery.seq_len:
                stage_data = prepare_data(
                    loaded.tokenizer, data_source, ts.seq_len, recipe.data.template,
                    recipe.data.validation_fraction, recipe.data.max_samples, recipe.seed, max_tokens=ts.tokens,
                    progress=progress and is_main,
                )
            res = run_stage("stage 1 transfer", model, cfg, stage_data)
            say(f"stage 1: attention MSE {format_loss(res.val_before)} -> {format_loss(res.val_after)} (validation) "
                f"in {res.seconds:.0f}s")
        elif recipe.transfer is not None:
            say("stage 1: skipped (the conversion added no parameters)")
        else:
            say("stage 1: skipped (the recipe has no attention transfer)")
        if recipe.auto_softmax_layers is not None:
            auto_layers = choose_and_restore_softmax_layers(model, recipe, training_data, run_dir, say, is_main,
                                                            accelerator.wait_for_everyone)
        for p in model.parameters():
            p.requires_grad_(False)
        # Stage 2: LoRA recovery, merged into the weights at the end.
        rs = recipe.recovery
        cfg = StageConfig.from_settings("recovery", rs, seed=recipe.seed)
        result.train_len = rs.seq_len
        torch.manual_seed(recipe.seed)
        peft_model = apply_lora(model, rs.lora)
        res = run_stage("stage 2 recovery", peft_model, cfg, training_data)
        say(f"stage 2: validation loss {format_loss(res.val_before)} -> {format_loss(res.val_after)} "
            f"in {res.seconds:.0f}s")
        if is_sharded(accelerator):
            loaded.model = _merged_from_shards(peft_model, model_spec, recipe, is_main, device, auto_layers)
        else:
            loaded.model = merge_lora(peft_model)
        if is_main:
            measure("recovered")

    if out_dir is not None and is_main:
        t0 = time.perf_counter()
        saved = save_model(loaded.model, loaded.tokenizer, out_dir, report=result.to_dict(), overwrite=overwrite,
                           dtype=save_dtype(dtype, loaded))
        result.seconds["save"] = time.perf_counter() - t0
        if result.run_dir is not None:
            copied = [name for name in ("metrics.jsonl", "loss.png") if (result.run_dir / name).is_file()]
            for name in copied:
                shutil.copy2(result.run_dir / name, Path(saved) / name)
            if copied:
                write_marker(Path(saved), "model")
        say(f"saved to {Path(out_dir).resolve()}")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return result


DTYPES = ("auto", "float32", "bfloat16", "float16")


def save_dtype(dtype: str | None, loaded: LoadedModel) -> torch.dtype | None:
    """The dtype to save in: ``auto`` (or None) is the teacher's own (bfloat16 for a GGUF teacher)."""
    if dtype in (None, "auto"):
        return getattr(loaded, "dtype", None)
    if dtype not in DTYPES:
        raise LinearizeError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)
