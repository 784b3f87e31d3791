"""Recovery training: stage 1 attention transfer, stage 2 LoRA (CE / KD / mix), on accelerate.

One loop serves both stages and every set-up: CPU, one GPU, and ``accelerate launch`` with DDP
(``configs/accelerate/ddp.yaml``) or FSDP2 (``configs/accelerate/fsdp2.yaml``).

* Batches: the global batch of ``batch_size`` packed sequences is split over processes, then into
  micro-batches (gradient accumulation). Which sequences form step ``s`` is a pure function of
  ``(seed, s)`` (a fresh permutation per epoch), and so are the random numbers of step ``s``
  (dropout), so a resumed run sees exactly the batches and noise an uninterrupted run would.
* Losses are token sums divided by the number of trained tokens in the global batch, so the
  result does not depend on the micro-batch size.
* AdamW, linear warm-up then cosine (or constant), gradient clipping, bf16 autocast on GPU.
* Checkpoints (``<run>/<stage>/checkpoint``: trainable parameters, optimizer and scheduler state,
  step) are written atomically every ``checkpoint_every`` steps and at the end; ``resume=True``
  continues from them. ``<run>/metrics.jsonl`` gets one line per ``log_every`` steps plus the
  validation passes, and ``<run>/loss.png`` is redrawn at every checkpoint.

Stage 1 (``transfer``) puts every linearized layer in ``"transfer"`` mode: it computes both the
teacher's softmax attention and the hybrid one on the same hidden states, passes the teacher's on
and stores their MSE; only the new modules under ``self_attn.core`` are trained. Stage 2
(``recovery``) trains LoRA adapters (peft) and, if the recipe says so, the new modules; KD teacher
logits come from the same model with adapters disabled and attention in ``"teacher"`` mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .data import IGNORE_INDEX, PackedData
from .errors import LinearizeError
from .interrupts import Interrupted, consume, deferred, handle_signals, requested
from .losses import cross_entropy_sum, recovery_loss_sum, transfer_loss

STAGES = ("transfer", "recovery")
CORE = ".self_attn.core."


class TrainingError(LinearizeError):
    """Training that cannot start: nothing to train, bad batch sizes, an incompatible checkpoint."""


# ----- configuration ------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """Everything one stage needs, from the recipe's ``transfer`` or ``recovery`` settings."""

    stage: str
    lr: float
    tokens: int
    seq_len: int
    batch_size: int
    micro_batch_size: int | None = None
    warmup_ratio: float = 0.0
    schedule: str = "cosine"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    loss: str = "mse"
    kd_weight: float = 0.5
    kd_temperature: float = 1.0
    loss_scale: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 1
    eval_every: int = 0
    activation_checkpointing: bool = False
    seed: int = 0

    @classmethod
    def from_settings(cls, stage: str, settings, seed: int = 0, **overrides) -> StageConfig:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.model_dump().items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.setdefault("loss", "mse" if stage == "transfer" else "ce")
        return cls(stage=stage, seed=seed, **values)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.tokens_per_step)

    def fingerprint(self) -> str:
        """What a checkpoint must agree on to be resumed (not the cadences, not memory-for-time trades)."""
        free = ("checkpoint_every", "log_every", "eval_every", "activation_checkpointing")
        keep = {k: v for k, v in asdict(self).items() if k not in free}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    stage: str
    steps: int
    tokens: int
    seconds: float
    val_before: float | None = None
    val_after: float | None = None
    final_loss: float | None = None
    resumed_from: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def make_accelerator():
    """An ``Accelerator`` for this process: bf16 autocast on a GPU that has it, fp32 otherwise."""
    from accelerate import Accelerator

    kwargs = {}
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        kwargs["mixed_precision"] = "bf16" if bf16 else "no"
    if not torch.cuda.is_available():
        kwargs["cpu"] = True  # also what makes torchrun / accelerate launch on CPUs use gloo (MULTI_CPU)
    return Accelerator(**kwargs)


# ----- model helpers ------------------------------------------------------------------------------
def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def set_activation_checkpointing(model, enabled: bool) -> None:
    """Recompute each decoder layer in the backward instead of keeping its activations.

    Non-reentrant checkpointing, so it also recomputes what stage 1's per-layer losses saved and needs no
    input gradients under LoRA."""
    base = base_model(model)
    if enabled:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif base.is_activation_checkpointing:
        base.activation_checkpointing_disable()


def linearized_attentions(model) -> list:
    from .modeling_linearized import LinearizedAttention

    return [m for m in model.modules() if isinstance(m, LinearizedAttention)]


def set_attention_mode(model, mode: str) -> None:
    """Like ``model.set_attention_mode`` but through peft / DDP wrappers."""
    for module in linearized_attentions(model):
        module.attention_mode = mode


def new_parameter_names(model) -> list[str]:
    """Names of the parameters the conversion added (feature maps, gates, sinks, mixing)."""
    return [n for n, _ in model.named_parameters() if CORE in f".{n}"]


def freeze_for_transfer(model) -> int:
    """Train only the new modules; returns how many parameters that is (0: skip stage 1)."""
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(CORE in f".{name}")
        count += p.numel() if p.requires_grad else 0
    return count


def apply_lora(model, lora, train_new_modules: bool | None = None):
    """Wrap ``model`` in peft LoRA adapters as ``lora`` (a :class:`LoraSettings`) says.

    The new modules of the conversion are trained in place (``requires_grad``) rather than through
    ``modules_to_save``: the attention layer and the kernels address ``self_attn.core`` directly,
    and a peft wrapper around it would hide its attributes. They are base parameters, so
    ``merge_and_unload`` keeps them as trained.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        bias="none",
    )
    try:
        with warnings.catch_warnings():  # peft probes transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise TrainingError(f"LoRA targets {list(lora.targets)}: {str(err).splitlines()[0]}") from None
    train_new = lora.train_new_modules if train_new_modules is None else train_new_modules
    for name, p in peft_model.named_parameters():
        if CORE in f".{name}" and "lora_" not in name:
            p.requires_grad_(train_new)
    return peft_model


def is_sharded(accelerator) -> bool:
    """True under FSDP, where prepare() shards the model's parameters in place."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type == DistributedType.FSDP


def full_state_dict(model) -> dict:
    """Every parameter and buffer of a (possibly sharded) model as full CPU tensors on the main process.

    A collective: every process must call it; the others get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def merge_lora(peft_model):
    """Fold the adapters into the weights: a plain (converted) model again, frozen, in eval mode."""
    model = peft_model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@contextlib.contextmanager
def teacher_mode(model):
    """Inside: ``model`` computes the teacher (adapters disabled, softmax attention everywhere)."""
    disable = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    modes = [m.attention_mode for m in linearized_attentions(model)]
    with disable:
        set_attention_mode(model, "teacher")
        try:
            yield model
        finally:
            for m, mode in zip(linearized_attentions(model), modes):
                m.attention_mode = mode


# ----- schedule, batches --------------------------------------------------------------------------
def lr_lambda(cfg: StageConfig):
    total = cfg.steps
    warmup = round(cfg.warmup_ratio * total)

    def factor(step: int) -> float:  # step = number of optimizer steps already taken
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class BatchOrder:
    """Global sample k of the run is ``perm_epoch[k mod N]`` with a fixed permutation per epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def indices(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> list[int]:
        per = batch_size // world
        start = step * batch_size + rank * per
        out = []
        for k in range(start, start + per):
            epoch, pos = divmod(k, self.n)
            out.append(int(self._perm(epoch)[pos]))
        return out


# ----- metrics ------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl`` in the run directory (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, stage: str, step: int) -> None:
        """Drop what a resumed (or restarted) stage will write again: later steps and later stages."""
        if not self.enabled or not self.path.is_file():
            return
        order = STAGES.index(stage)
        keep = [
            r for r in self.read()
            if STAGES.index(r["stage"]) < order or (r["stage"] == stage and r["step"] <= step and step > 0)
        ]
        self._rewrite(keep)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def plot_metrics(metrics_path: Path, png_path: Path) -> Path | None:
    """Loss curves per stage (training loss and validation points) as a PNG."""
    rows = MetricsLog(metrics_path).read()
    stages = [s for s in STAGES if any(r["stage"] == s for r in rows)]
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        train = [r for r in rows if r["stage"] == stage and "loss" in r]
        val = [r for r in rows if r["stage"] == stage and "val_loss" in r]
        if train:
            ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train")
        if val:
            ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
        ax.set_title("stage 1: attention transfer (MSE)" if stage == "transfer" else "stage 2: recovery")
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss")
        if stage == "transfer":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


# ----- checkpoints --------------------------------------------------------------------------------
# <run>/<stage>/step-NNNNNN/{state.pt, meta.json} and <run>/<stage>/latest naming the newest one. A checkpoint is
# written into a temporary directory, renamed to a new name, and only then does ``latest`` (replaced atomically)
# point at it; older ones are removed after that. A kill at any moment leaves ``latest`` naming a complete one.
LATEST = "latest"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage


def checkpoint_dir(run_dir: Path, stage: str) -> Path | None:
    """The stage's newest complete checkpoint (None: there is none)."""
    folder = stage_dir(run_dir, stage)
    try:
        name = (folder / LATEST).read_text().strip()
    except OSError:
        return None
    path = folder / name
    return path if name and (path / "meta.json").is_file() and (path / "state.pt").is_file() else None


def read_checkpoint_meta(run_dir: Path, stage: str) -> dict | None:
    path = checkpoint_dir(run_dir, stage)
    return json.loads((path / "meta.json").read_text()) if path is not None else None


def _state_dict_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_checkpoint(folder: Path, tmp: Path, step: int) -> Path:
    """Rename ``tmp`` to a fresh ``step-N`` name, point ``latest`` at it, remove the older ones."""
    name = f"step-{step:06d}"
    n = 1
    while (folder / name).exists():
        name, n = f"step-{step:06d}.{n}", n + 1
    tmp.rename(folder / name)
    pointer = folder / f".{LATEST}.tmp-{os.getpid()}"
    pointer.write_text(name + "\n")
    _fsync(pointer)
    os.replace(pointer, folder / LATEST)
    _fsync(folder)
    for old in folder.iterdir():
        if old.is_dir() and old.name != name and old.name.startswith("step-"):
            shutil.rmtree(old, ignore_errors=True)
    return folder / name


def save_checkpoint(run_dir, cfg, model, optimizer, scheduler, step, accelerator, complete=False, result=None,
                    provenance=None) -> Path | None:
    """Write the stage's checkpoint at ``step`` (a collective: every process calls it); its path on the main one."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options(ignore_frozen_params=True))
    path = None
    if accelerator.is_main_process:
        folder = stage_dir(run_dir, cfg.stage)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.tmp-", dir=folder))
        try:
            torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict()}, tmp / "state.pt")
            meta = {"stage": cfg.stage, "step": step, "steps": cfg.steps, "complete": complete,
                    "fingerprint": cfg.fingerprint(), "config": asdict(cfg), "result": result,
                    "provenance": provenance}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            for f in tmp.iterdir():
                _fsync(f)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        path = _publish_checkpoint(folder, tmp, step)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(run_dir, cfg, model, optimizer=None, scheduler=None) -> dict | None:
    """Restore a stage's checkpoint into ``model`` (and optimizer/scheduler); its meta, or None."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_state_dict,
    )

    path = checkpoint_dir(run_dir, cfg.stage)
    if path is None:
        return None
    meta = json.loads((path / "meta.json").read_text())
    if meta["fingerprint"] != cfg.fingerprint():
        raise TrainingError(
            f"{path} was written with other {cfg.stage} settings "
            f"({_diff(meta['config'], asdict(cfg))}); start over with --overwrite, or resume with the same settings"
        )
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    opts = _state_dict_options(strict=False)
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=opts)
    else:
        set_model_state_dict(model, state["model"], options=opts)
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return meta


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k}: {old.get(k)} -> {new[k]}" for k in keys) or "unknown difference"


# ----- the loop -----------------------------------------------------------------------------------
def _micro_batch(cfg: StageConfig, per_rank: int, device: torch.device) -> int:
    micro = cfg.micro_batch_size or (per_rank if device.type == "cpu" else min(per_rank, 8))
    micro = max(1, min(micro, per_rank))
    while per_rank % micro:
        micro -= 1
    return micro


def _forward_loss(cfg, model, raw_model, ids, labels, n_label_tokens):
    """Loss of one micro-batch, already divided for the global batch; plus per-layer MSEs (stage 1)."""
    if cfg.stage == "transfer":
        set_attention_mode(raw_model, "transfer")
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        layer = [m.transfer_loss for m in linearized_attentions(raw_model)]
        return transfer_loss(layer, cfg.loss_scale), torch.stack([x.detach().float() for x in layer])
    teacher_logits = None
    if cfg.loss in ("kd", "mix"):
        with torch.no_grad(), teacher_mode(raw_model):
            teacher_logits = raw_model(input_ids=ids, use_cache=False).logits
    logits = model(input_ids=ids, use_cache=False).logits
    total, _ = recovery_loss_sum(cfg.loss, logits, labels, teacher_logits, cfg.kd_weight, cfg.kd_temperature)
    return total / max(1, n_label_tokens), None


@torch.no_grad()
def evaluate(cfg: StageConfig, raw_model, data: PackedData, micro: int, accelerator) -> dict:
    """Validation: mean attention MSE (stage 1, scaled like the loss) or next-token CE (stage 2)."""
    was_training = raw_model.training
    raw_model.eval()
    device = accelerator.device
    sums, count, layer_sum = 0.0, 0, None
    with accelerator.autocast():
        for start in range(0, len(data), micro):
            ids = data.input_ids[start : start + micro].to(device)
            labels = data.labels[start : start + micro].to(device)
            if cfg.stage == "transfer":
                set_attention_mode(raw_model, "transfer")
                raw_model(input_ids=ids, use_cache=False, logits_to_keep=1)
                layer = torch.stack([m.transfer_loss.float() for m in linearized_attentions(raw_model)]) * len(ids)
                layer_sum = layer if layer_sum is None else layer_sum + layer
                count += len(ids)
            else:
                set_attention_mode(raw_model, "hybrid")
                total, n = cross_entropy_sum(raw_model(input_ids=ids, use_cache=False).logits, labels)
                sums += float(total)
                count += n
    set_attention_mode(raw_model, "hybrid")
    raw_model.train(was_training)
    if cfg.stage == "transfer":
        per_layer = (layer_sum / max(1, count)).tolist()
        return {"val_loss": cfg.loss_scale * sum(per_layer) / len(per_layer), "val_layer_mse": per_layer}
    ce = sums / max(1, count)
    return {"val_loss": ce, "val_ppl": math.exp(min(ce, 50.0))}


def _average_gradients(params: list, world: int) -> None:
    """Average the gradients of ``params`` over all processes in one all-reduce (no wrapper involved)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def train_stage(
    model,
    cfg: StageConfig,
    train_data: PackedData,
    val_data: PackedData | None,
    run_dir: str | Path,
    accelerator=None,
    resume: bool = False,
    log=print,
    progress: bool = True,
    stop_after: int | None = None,
    provenance: dict | None = None,
) -> StageResult:
    """Train ``model``'s trainable parameters for one stage; returns what happened.

    ``model`` is the raw module (converted model or its peft wrapper) with ``requires_grad`` set
    on what to train. ``stop_after`` stops after that many optimizer steps in total (as an
    interruption would; used by tests); the latest checkpoint then is the one a resume starts from.
    ``provenance`` (what the run was trained from) is stored in every checkpoint.

    SIGINT / SIGTERM during the stage finish the current optimizer step, write a checkpoint at it and
    raise :class:`~linearize.interrupts.Interrupted` (see :mod:`linearize.interrupts`).
    """
    from tqdm.auto import tqdm

    accelerator = accelerator or make_accelerator()
    run_dir = Path(run_dir)
    is_main = accelerator.is_main_process
    log = log if is_main else (lambda *a, **k: None)
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=is_main)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise TrainingError(f"{cfg.stage}.batch_size {cfg.batch_size} is not a multiple of the {world} processes")
    if train_data.seq_len != cfg.seq_len:
        raise TrainingError(f"data packed to {train_data.seq_len} tokens, stage wants {cfg.seq_len}")
    per_rank = cfg.batch_size // world
    micro = _micro_batch(cfg, per_rank, accelerator.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError(f"stage {cfg.stage}: the model has no trainable parameters")
    if cfg.stage == "transfer" and not linearized_attentions(model):
        raise TrainingError("attention transfer needs a converted model")

    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # Stage 1 trains only the small new modules from per-layer losses that never pass through the layers'
    # outputs, which sharding hooks (FSDP2) rely on. So with several processes the frozen model stays a plain
    # replica on each and the new modules' gradients are averaged here, whatever the launch (DDP or FSDP2).
    replicated = cfg.stage == "transfer" and world > 1
    if replicated:
        model = raw_model = model.to(accelerator.device)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
        raw_model = accelerator.unwrap_model(model)
    inner_optimizer = getattr(optimizer, "optimizer", optimizer)

    start_step, result_meta = 0, None
    if resume:
        meta = load_checkpoint(run_dir, cfg, raw_model, inner_optimizer, scheduler)
        if meta is not None:
            start_step, result_meta = meta["step"], meta
            log(f"{cfg.stage}: resuming from step {start_step}/{cfg.steps} ({checkpoint_dir(run_dir, cfg.stage)})")
    if result_meta is not None and result_meta.get("complete"):
        log(f"{cfg.stage}: already complete, skipping")
        set_attention_mode(raw_model, "hybrid")
        return StageResult(**{**result_meta["result"], "resumed_from": start_step})
    metrics.truncate(cfg.stage, start_step)

    order = BatchOrder(len(train_data), cfg.seed)
    tps = cfg.tokens_per_step
    n_params = sum(p.numel() for p in trainable)
    log(
        f"{cfg.stage}: {cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens = {cfg.steps * tps:,} tokens, "
        f"{n_params:,} trainable parameters, micro-batch {micro} x {per_rank // micro} accumulation x {world} processes"
    )

    def checkpoint(step: int, complete: bool = False, result: StageResult | None = None) -> Path | None:
        summary = result.to_dict() if result is not None else {"val_before": val_before}
        return save_checkpoint(run_dir, cfg, raw_model, inner_optimizer, scheduler, step, accelerator,
                               complete=complete, result=summary, provenance=provenance)

    def stop_if_requested(step: int) -> None:
        """After a signal: checkpoint at ``step`` (all processes agree on it) and raise Interrupted."""
        signum = requested()
        if world > 1:
            signum = int(accelerator.reduce(torch.tensor(signum or 0, device=accelerator.device), "max")) or None
        if signum is None:
            return
        consume()
        bar.close()
        path = checkpoint(step)
        if is_main:
            plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
        raise Interrupted(signum, stage=cfg.stage, step=step, steps=cfg.steps, checkpoint=path)

    with handle_signals(), deferred():
        val_before = None
        if result_meta is not None:
            val_before = (result_meta.get("result") or {}).get("val_before")
        elif val_data is not None:
            ev = evaluate(cfg, raw_model, val_data, micro, accelerator)
            val_before = ev["val_loss"]
            metrics.write({"stage": cfg.stage, "step": 0, "tokens": 0, **ev})

        bar = tqdm(
            total=cfg.steps * tps, initial=start_step * tps, unit="tok", unit_scale=True, dynamic_ncols=True,
            desc="stage 1 transfer" if cfg.stage == "transfer" else "stage 2 recovery",
            disable=not (is_main and progress),
        )
        t_start, tokens_done, loss_value = time.perf_counter(), 0, None
        device = accelerator.device
        set_activation_checkpointing(raw_model, cfg.activation_checkpointing)
        model.train()
        for step in range(start_step, cfg.steps):
            if stop_after is not None and step >= stop_after:
                break
            stop_if_requested(step)
            t_step = time.perf_counter()
            torch.manual_seed(cfg.seed * 1_000_003 + step * 997 + rank)
            idx = order.indices(step, cfg.batch_size, rank, world)
            ids_all, labels_all = train_data.input_ids[idx], train_data.labels[idx]
            n_label = int((labels_all[:, 1:] != IGNORE_INDEX).sum())
            if world > 1:  # normalise by the trained tokens of the whole global batch
                n_label = int(accelerator.reduce(torch.tensor(n_label, device=device), "sum"))
                n_label = max(1, n_label // world)  # DDP averages gradients over processes
            total = torch.zeros((), device=device)
            layer_total = None
            n_micro = per_rank // micro
            for m in range(n_micro):
                ids = ids_all[m * micro : (m + 1) * micro].to(device)
                labels = labels_all[m * micro : (m + 1) * micro].to(device)
                sync = m == n_micro - 1 or world == 1
                with contextlib.nullcontext() if (sync or replicated) else accelerator.no_sync(model):
                    with accelerator.autocast() if replicated else contextlib.nullcontext():  # prepare() adds it otherwise
                        loss, layer = _forward_loss(cfg, model, raw_model, ids, labels, n_label)
                    if cfg.stage == "transfer":
                        loss = loss / n_micro
                    accelerator.backward(loss)
                total += loss.detach().float()
                if layer is not None:
                    layer_total = layer / n_micro if layer_total is None else layer_total + layer / n_micro
            if replicated:
                _average_gradients(trainable, world)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            else:
                grad_norm = accelerator.clip_grad_norm_(trainable if world == 1 else model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(accelerator.reduce(total, "mean")) if world > 1 else float(total)
            tokens_done += tps
            bar.update(tps)
            bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - t_start
                row = {
                    "stage": cfg.stage, "step": done, "tokens": done * tps, "loss": loss_value,
                    "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tok_per_s": tps / max(1e-9, time.perf_counter() - t_step), "elapsed_s": elapsed,
                }
                if layer_total is not None:
                    row["layer_mse"] = [round(float(x), 8) for x in layer_total]
                metrics.write(row)
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps and val_data is not None:
                metrics.write({"stage": cfg.stage, "step": done, "tokens": done * tps,
                               **evaluate(cfg, raw_model, val_data, micro, accelerator)})
                model.train()
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                checkpoint(done)
                if is_main:
                    plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
        bar.close()
        set_activation_checkpointing(raw_model, False)
        seconds = time.perf_counter() - t_start
        interrupted = stop_after is not None and stop_after < cfg.steps
        completed_steps = min(cfg.steps, stop_after) if interrupted else cfg.steps
        result = StageResult(
            stage=cfg.stage, steps=completed_steps, tokens=completed_steps * tps, seconds=seconds,
            val_before=val_before, final_loss=loss_value, resumed_from=start_step,
            extra={"tok_per_s": tokens_done / max(1e-9, seconds), "trainable_parameters": n_params},
        )
        if not interrupted:
            if val_data is not None:
                ev = evaluate(cfg, raw_model, val_data, micro, accelerator)
                result.val_after = ev["val_loss"]
                metrics.write({"stage": cfg.stage, "step": cfg.steps, "tokens": cfg.steps * tps, **ev})
            final = checkpoint(cfg.steps, complete=True, result=result)
        if is_main:
            plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
        set_attention_mode(raw_model, "hybrid")
        accelerator.free_memory()
        if not interrupted and requested() is not None:  # a signal during the last step: the stage is complete
            raise Interrupted(consume(), stage=cfg.stage, step=cfg.steps, steps=cfg.steps, checkpoint=final)
    return result
