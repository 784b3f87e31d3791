"""Recovery training on tiny models: stage 1, stage 2, resume, merge, KD, metrics."""

import json

import pytest
import torch
from tiny_models import tiny_model

from linearize.data import PackedData
from linearize.losses import cross_entropy_sum, kd_sum, recovery_loss_sum
from linearize.recipes import LoraSettings, load_recipe
from linearize.surgery import linearize_model
from linearize.training import (
    StageConfig,
    TrainingError,
    _forward_loss,
    apply_lora,
    freeze_for_transfer,
    lr_lambda,
    merge_lora,
    teacher_mode,
    train_stage,
)

SEQ = 32


def counting_data(n: int, seed: int) -> PackedData:
    """Learnable sequences: each token is the previous one + 1 (mod 120, offset 3)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 120, (n, 1), generator=g)
    ids = (start + torch.arange(SEQ)) % 120 + 3
    return PackedData(ids, ids.clone())


TRAIN, VAL = counting_data(32, 0), counting_data(8, 1)


def converted(recipe: str = "lizard", seed: int = 0):
    r = load_recipe(recipe)
    model = tiny_model("llama", seed=seed)
    linearize_model(model, r.attention.to_spec(), [1] if recipe == "liger-gla" else [])
    return model, r


def recovery_cfg(**kw) -> StageConfig:
    base = {"tokens": SEQ * 4 * 8, "seq_len": SEQ, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.1, "checkpoint_every": 0}
    return StageConfig.from_settings("recovery", load_recipe("lizard").recovery, **{**base, **kw})


def test_stage1_lowers_attention_mse(tmp_path):
    model, r = converted("lizard")
    assert freeze_for_transfer(model) > 0
    assert all(".core." in n for n, p in model.named_parameters() if p.requires_grad)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = StageConfig.from_settings("transfer", r.transfer, tokens=SEQ * 4 * 12, seq_len=SEQ, batch_size=4, lr=2e-2,
                                    checkpoint_every=0)
    res = train_stage(model, cfg, TRAIN, VAL, tmp_path, progress=False)
    assert res.val_after < 0.7 * res.val_before, (res.val_before, res.val_after)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows[1]["layer_mse"]) == 3  # per-layer losses are logged
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_liger_has_nothing_to_transfer():
    model, _ = converted("liger-gla")
    assert freeze_for_transfer(model) == 0


def test_stage2_lowers_validation_loss_and_merges_exactly(tmp_path):
    model, _r = converted("lizard")
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = apply_lora(model, LoraSettings(rank=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"]))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any(".core." in n for n in names)  # train_new_modules
    res = train_stage(peft_model, recovery_cfg(), TRAIN, VAL, tmp_path, progress=False)
    assert res.val_after < res.val_before - 0.05, (res.val_before, res.val_after)

    ids = VAL.input_ids[:2]
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids, use_cache=False).logits
    merged = merge_lora(peft_model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        plain = merged(input_ids=ids, use_cache=False).logits
    assert (adapted - plain).abs().max() <= 1e-5


def test_resume_reaches_the_same_losses(tmp_path):
    def run(run_dir, **kw):
        torch.manual_seed(0)
        model, _ = converted("lizard")
        for p in model.parameters():
            p.requires_grad_(False)
        peft_model = apply_lora(model, LoraSettings(rank=4, alpha=8, dropout=0.1))  # dropout: RNG must match too
        cfg = recovery_cfg(tokens=SEQ * 4 * 6, micro_batch_size=2, checkpoint_every=2, loss="mix", kd_weight=0.3)
        return train_stage(peft_model, cfg, TRAIN, None, run_dir, progress=False, **kw)

    def losses(run_dir):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    run(tmp_path / "a")
    run(tmp_path / "b", stop_after=3)  # "killed" after step 3; the last checkpoint is step 2
    assert max(losses(tmp_path / "b")) == 3
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.resumed_from == 2
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7), step
    again = run(tmp_path / "b", resume=True)  # a complete stage is not trained again
    assert again.resumed_from == 6 and losses(tmp_path / "b") == b


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    model, r = converted("lizard")
    freeze_for_transfer(model)
    cfg = StageConfig.from_settings("transfer", r.transfer, tokens=SEQ * 4, seq_len=SEQ, batch_size=4)
    train_stage(model, cfg, TRAIN, None, tmp_path, progress=False)
    other = StageConfig.from_settings("transfer", r.transfer, tokens=SEQ * 4, seq_len=SEQ, batch_size=4, lr=0.5)
    with pytest.raises(TrainingError, match="lr"):
        train_stage(model, other, TRAIN, None, tmp_path, progress=False, resume=True)


def test_kd_loss_is_zero_when_student_is_teacher():
    logits = torch.randn(2, 10, 50)
    labels = torch.randint(0, 50, (2, 10))
    labels[0, :4] = -100
    kd, n = kd_sum(logits, logits.clone(), labels, temperature=2.0)
    assert kd.item() == 0.0 and n == 2 * 9 - 3
    assert kd_sum(logits, torch.randn(2, 10, 50), labels)[0].item() > 0
    ce, _ = cross_entropy_sum(logits, labels)
    mix, _ = recovery_loss_sum("mix", logits, labels, logits, kd_weight=0.25)
    assert mix.item() == pytest.approx(0.75 * ce.item())

    # On a converted model: the student in teacher mode with adapters off *is* the KD teacher.
    model, _ = converted("lizard")
    peft_model = apply_lora(model, LoraSettings(rank=4, alpha=8))
    cfg = recovery_cfg(loss="kd")
    ids = VAL.input_ids[:2]
    with torch.no_grad():
        hybrid_kd, _ = _forward_loss(cfg, peft_model, peft_model, ids, ids, 62)
        with teacher_mode(peft_model):
            teacher_kd, _ = _forward_loss(cfg, peft_model, peft_model, ids, ids, 62)
    assert hybrid_kd.item() > 1e-4
    assert abs(teacher_kd.item()) < 1e-6


def test_warmup_cosine_schedule():
    f = lr_lambda(StageConfig(stage="recovery", lr=1.0, tokens=100 * 8, seq_len=8, batch_size=1, warmup_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(99) < 0.01


def test_nothing_to_train_is_an_error(tmp_path):
    model, _r = converted("liger-gla")
    freeze_for_transfer(model)
    cfg = StageConfig.from_settings("transfer", load_recipe("lizard").transfer, tokens=SEQ * 4, seq_len=SEQ,
                                    batch_size=4)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        train_stage(model, cfg, TRAIN, None, tmp_path, progress=False)


@pytest.mark.parametrize("stage", ["transfer", "recovery"])
def test_activation_checkpointing_recomputes_layers_and_changes_nothing_else(tmp_path, stage):
    """With activation checkpointing every decoder layer runs again in the backward (counted), and the
    losses and trained weights equal a run without it; it is switched off after the stage."""

    def run(checkpointing: bool, run_dir):
        model, r = converted("lizard")
        if stage == "transfer":
            freeze_for_transfer(model)
            cfg = StageConfig.from_settings("transfer", r.transfer, tokens=SEQ * 4 * 3, seq_len=SEQ, batch_size=4,
                                            checkpoint_every=0, activation_checkpointing=checkpointing)
            trained = model
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            trained = apply_lora(model, LoraSettings(rank=4, alpha=8))
            cfg = recovery_cfg(tokens=SEQ * 4 * 3, activation_checkpointing=checkpointing)
        calls = []
        model.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
        res = train_stage(trained, cfg, TRAIN, None, run_dir, progress=False)
        assert not model.is_activation_checkpointing
        weights = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
        return res.final_loss, weights, len(calls)

    loss_plain, w_plain, calls_plain = run(False, tmp_path / "plain")
    loss_ckpt, w_ckpt, calls_ckpt = run(True, tmp_path / "ckpt")
    assert calls_plain == 3 and calls_ckpt == 6  # 3 steps; each layer recomputed once in the backward
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    assert w_ckpt.keys() == w_plain.keys()
    for name in w_plain:
        torch.testing.assert_close(w_ckpt[name], w_plain[name], rtol=1e-5, atol=1e-6)


def _lizard_run_setup(root, layers: int, stages: dict[str, dict]):
    """A tiny Llama with a word-level tokenizer, a text corpus and a Lizard recipe with ``stages`` (name: the
    settings that replace the recipe's; the other stage dropped) under ``root``, and the single-process run
    every multi-process launch must reproduce."""
    import random

    from test_recipes_and_cli import _tokenizer_dir

    tiny_model("llama", num_hidden_layers=layers).save_pretrained(root / "tiny")
    _tokenizer_dir(root / "tiny")
    rng = random.Random(0)
    paragraphs = []
    for _ in range(400):
        start = rng.randint(0, 59)
        paragraphs.append(" ".join(f"w{(start + 3 * j + rng.randint(0, 1)) % 60}" for j in range(rng.randint(20, 80))))
    (root / "data.txt").write_text("\n\n".join(paragraphs))
    recipe = load_recipe("lizard").model_dump()
    recipe["name"] = "lizard-tiny"
    for stage in ("transfer", "recovery"):
        if stage in stages:
            recipe[stage].update(stages[stage])
        else:
            recipe[stage] = None
    recipe["data"].update(template="text")
    (root / "recipe.yaml").write_text(__import__("yaml").safe_dump(recipe))
    _cli_run(root, "single", [])
    return root


@pytest.fixture(scope="module")
def multi_process_setup(tmp_path_factory):
    """Both stages of Lizard on a 4-layer tiny Llama, run by one process."""
    settings = dict(tokens=1024, seq_len=64, batch_size=4, checkpoint_every=2)
    return _lizard_run_setup(tmp_path_factory.mktemp("multi"), 4, {"transfer": settings, "recovery": settings})


def _cli_run(root, name: str, launcher: list[str], *extra: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = ["train", str(root / "tiny"), "--recipe", str(root / "recipe.yaml"), "--data", str(root / "data.txt"),
            "--out", str(root / name), "--run-dir", str(root / f"{name}.train"), "--eval-tokens", "512", *extra]
    if launcher:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("distributed_cpu_launch.py")), *launcher, *args]
    else:
        cmd = [sys.executable, "-m", "linearize.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir) -> list[float]:
    return [r["loss"] if "loss" in r else r["val_loss"] for r in _metrics(run_dir)]


def _grad_norms(run_dir) -> list[float]:
    return [r["grad_norm"] for r in _metrics(run_dir) if "grad_norm" in r]


def _logits(model_dir) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return model(torch.arange(3, 43)[None]).logits


@pytest.mark.parametrize("launch", ["ddp", "fsdp2"])
def test_two_processes_reproduce_one(multi_process_setup, launch):
    """Two CPU processes (gloo) with DDP or FSDP2 train the same model as one process: stage 1 (the new
    modules' gradients averaged over a replicated frozen model), stage 2 (LoRA; under FSDP2 the sharded
    result is gathered and merged into a freshly converted copy), and a resume from complete stages."""
    root = multi_process_setup
    _cli_run(root, launch, ["--fsdp2"] if launch == "fsdp2" else [])
    assert _losses(root / f"{launch}.train") == pytest.approx(_losses(root / "single.train"), rel=1e-5)
    expected = _logits(root / "single")
    torch.testing.assert_close(_logits(root / launch), expected, rtol=1e-5, atol=1e-5)
    resumed = _cli_run(root, launch, ["--fsdp2"] if launch == "fsdp2" else [], "--resume")
    assert "recovery: already complete, skipping" in resumed.stdout
    torch.testing.assert_close(_logits(root / launch), expected, rtol=1e-5, atol=1e-5)


def test_fsdp2_on_the_kernels_reproduces_the_reference(tmp_path):
    """The kernels read some of their layer's parameters directly, not through module calls (hedgehog weights,
    sinks, mix; in decoding the gate projection too), and FSDP2 sharding still holds: ``fully_shard`` per
    decoder layer gathers all of a layer's parameters around its forward and its backward. Two processes with
    every attention call on the kernels (interpreter) run Lizard's LoRA stage (the sharded one; stage 1 keeps
    a replica) as one process does on the PyTorch reference: same losses and gradient norms at every step,
    same merged model."""
    root = _lizard_run_setup(tmp_path, 1, {"recovery": dict(tokens=128, seq_len=32, batch_size=2)})
    _cli_run(root, "fsdp2-kernels", ["--fsdp2", "--kernels"])
    assert _losses(root / "fsdp2-kernels.train") == pytest.approx(_losses(root / "single.train"), rel=1e-6)
    # The LoRA gradients pass through the kernels' backward (dq, dk, dv): their norm moves by 4.5e-4 when the
    # kernels' output is scaled by 1.001, while the losses move by only ~2e-6 (checked).
    assert _grad_norms(root / "fsdp2-kernels.train") == pytest.approx(_grad_norms(root / "single.train"), rel=1e-5)
    torch.testing.assert_close(_logits(root / "fsdp2-kernels"), _logits(root / "single"), rtol=1e-4, atol=1e-4)


def _children(pid: int) -> list[int]:
    from pathlib import Path

    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_sigterm_to_a_two_process_launch_checkpoints_one_step_and_resumes_to_the_same_model(tmp_path):
    """SIGTERM to every process of a DDP launch (as SLURM sends it): the processes agree on one step, write one
    checkpoint at it together and exit 143, rank 0 printing how to continue; the same launch with --resume
    finishes with the model one process trains uninterrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    steps = 12
    settings = dict(tokens=64 * 4 * steps, seq_len=64, batch_size=4, checkpoint_every=0)
    root = _lizard_run_setup(tmp_path, 2, {"recovery": settings})
    args = ["train", str(root / "tiny"), "--recipe", str(root / "recipe.yaml"), "--data", str(root / "data.txt"),
            "--out", str(root / "ddp"), "--run-dir", str(root / "ddp.train"), "--eval-tokens", "512"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              str(Path(__file__).with_name("distributed_cpu_launch.py"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*launch, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=root)
    deadline = time.time() + 240
    while not any(r.get("step", 0) >= 2 and "loss" in r for r in _metrics_if_any(root / "ddp.train")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    from linearize.training import read_checkpoint_meta

    meta = read_checkpoint_meta(root / "ddp.train", "recovery")
    assert meta is not None and 2 <= meta["step"] < steps, meta
    assert stderr.count(f"interrupted by SIGTERM in stage recovery at step {meta['step']} of {steps}") == 1
    assert "to continue: the same launch command with --resume" in stderr

    resumed = subprocess.run([*launch, *args, "--resume"], capture_output=True, text=True, env=env, cwd=root,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"recovery: resuming from step {meta['step']}/{steps}" in resumed.stdout
    assert _losses(root / "ddp.train") == pytest.approx(_losses(root / "single.train"), rel=1e-5)
    torch.testing.assert_close(_logits(root / "ddp"), _logits(root / "single"), rtol=1e-5, atol=1e-5)


def _metrics_if_any(run_dir) -> list[dict]:
    try:
        return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []
