"""Interruptions with real signals on real training runs, and resuming them.

The main job runs as the installed ``linearize`` command in a subprocess on a tiny Lizard teacher
(both stages train). A test sends SIGINT or SIGTERM once the run's metrics.jsonl shows a step
inside a stage; the run must write a checkpoint at its current step, print the command that
continues it and exit 130 / 143; that command must finish the run, and the saved model must be
the one an uninterrupted run saves (max abs logit difference <= 1e-6).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_models import save_tiny_teacher, word_text

from linearize.cli import main
from linearize.outputs import DirectoryLock, lock_path
from linearize.training import checkpoint_dir, read_checkpoint_meta

EXE = str(Path(sys.executable).with_name("linearize"))
STEPS = 12  # per stage: lizard's demo batches of 1 x 256 tokens
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    save_tiny_teacher(root / "teacher")
    (root / "data.txt").write_text(word_text(6000))
    return root


def command(work: Path, out: str, *extra: str) -> list[str]:
    return [EXE, str(work / "teacher"), "--recipe", "lizard", "--out", str(work / out), "--data", str(work / "data.txt"),
            "--budget", "demo", "--tokens", str(STEPS * 256), "--eval-tokens", "512", *extra]


@pytest.fixture(scope="module")
def reference(work):
    """An uninterrupted run (started with --resume on a fresh directory, which must say there is nothing to resume)."""
    proc = subprocess.run(command(work, "reference", "--resume"), capture_output=True, text=True, env=ENV, cwd=work,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--resume: no checkpoint in" in proc.stdout and "starting from the beginning" in proc.stdout
    return work / "reference"


def _metrics_step(run_dir: Path, stage: str) -> int:
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return -1
    return max((r["step"] for r in rows if r.get("stage") == stage and "loss" in r), default=-1)


def run_until(cmd: list[str], cwd: Path, run_dir: Path, stage: str, step: int, signum: int, during=None):
    """Start ``cmd``; once ``stage`` has logged ``step``, call ``during()`` and send ``signum``; wait."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)
    deadline = time.time() + 240
    while _metrics_step(run_dir, stage) < step:
        assert proc.poll() is None, f"the run ended before {stage} step {step}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    if during is not None:
        during()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def continue_command(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("to continue: "))
    args = shlex.split(line.removeprefix("to continue: "))
    assert args[0] == "linearize" and args[-1] == "--resume"
    return [EXE, *args[1:]]


def logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.arange(3, 63).view(2, 30)
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["stage"], r["step"]): r["loss"] for r in rows if "loss" in r}


def test_sigint_in_stage_1_and_sigterm_in_stage_2_resume_to_the_uninterrupted_model(work, reference):
    out, run_dir = work / "interrupted", work / "interrupted.train"
    second = {}

    def second_run_is_refused():
        """Meanwhile, a second run into the same directories is refused, naming the first."""
        result = CliRunner().invoke(main, command(work, "interrupted", "--resume")[1:])
        second["result"] = result

    # SIGINT in stage 1 (attention transfer).
    code, _, stderr = run_until(command(work, "interrupted"), work, run_dir, "transfer", 2, signal.SIGINT,
                                during=second_run_is_refused)
    assert code == 130, stderr[-3000:]
    meta = read_checkpoint_meta(run_dir, "transfer")
    assert meta is not None and not meta["complete"] and 2 <= meta["step"] < STEPS
    assert f"interrupted by SIGINT in stage transfer at step {meta['step']} of {STEPS}; checkpoint written: " \
           f"{checkpoint_dir(run_dir, 'transfer')}" in stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    refused = second["result"]
    assert refused.exit_code == 2, refused.output
    assert "is in use by another run (pid" in refused.output and "linearize" in refused.output
    assert not lock_path(out).exists() and not lock_path(run_dir).exists()  # released on the way out
    assert not out.exists()  # no model was saved

    # Resume; SIGTERM in stage 2 (LoRA recovery).
    resume = continue_command(stderr)
    code, _, stderr = run_until(resume, work, run_dir, "recovery", 2, signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    meta = read_checkpoint_meta(run_dir, "recovery")
    assert meta is not None and 2 <= meta["step"] < STEPS and meta["result"]["val_before"] is not None
    assert read_checkpoint_meta(run_dir, "transfer")["complete"]
    assert f"interrupted by SIGTERM in stage recovery at step {meta['step']} of {STEPS}" in stderr

    # Resume to the end.
    proc = subprocess.run(continue_command(stderr), capture_output=True, text=True, env=ENV, cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transfer: already complete, skipping" in proc.stdout
    assert f"recovery: resuming from step {meta['step']}/{STEPS}" in proc.stdout
    assert "stage 2: validation loss" in proc.stdout and "n/a" not in proc.stdout

    assert (logits(out) - logits(reference)).abs().max().item() <= 1e-6
    assert losses(run_dir) == pytest.approx(losses(work / "reference.train"), rel=1e-5)
    report = json.loads((out / "linearize_report.json").read_text())
    assert report["training"]["recovery"]["val_before"] is not None


def test_resume_refuses_other_data_or_teacher_naming_each_difference(work, reference, tmp_path):
    import shutil

    shutil.copytree(reference, tmp_path / "ref")
    shutil.copytree(work / "reference.train", tmp_path / "ref.train")
    before = {p: p.read_bytes() for p in (tmp_path / "ref.train").rglob("*") if p.is_file()}
    other_data = tmp_path / "other.txt"
    other_data.write_text(word_text(6000, seed=1))
    args = command(work, "x", "--resume")[1:]
    args[args.index("--out") + 1] = str(tmp_path / "ref")

    data_args = list(args)
    data_args[data_args.index("--data") + 1] = str(other_data)
    result = CliRunner().invoke(main, data_args)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: --resume: the checkpoints in") and "were trained from other inputs" in line
    assert "data." in line and "teacher" not in line.split("other inputs")[1].split("resume with")[0]

    save_tiny_teacher(tmp_path / "teacher2", seed=1)
    teacher_args = list(args)
    teacher_args[0] = str(tmp_path / "teacher2")
    result = CliRunner().invoke(main, teacher_args)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "teacher." in line and "data." not in line
    assert {p: p.read_bytes() for p in (tmp_path / "ref.train").rglob("*") if p.is_file()} == before


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from accelerate import Accelerator
    from linearize.training import StageConfig, save_checkpoint
    model = torch.nn.Linear(1024, 1024)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cfg = StageConfig(stage="recovery", lr=1e-3, tokens=1 << 30, seq_len=8, batch_size=1)
    accelerator = Accelerator(cpu=True)
    for step in range(int(sys.argv[2]), int(sys.argv[2]) + 100000):
        save_checkpoint(sys.argv[1], cfg, model, optimizer, scheduler, step, accelerator)
        print(step, flush=True)
""")


def test_kill_9_while_writing_a_checkpoint_leaves_the_previous_one_valid(tmp_path):
    run_dir = tmp_path / "run"
    for attempt, delay in enumerate((0.13, 0.29, 0.41)):
        start = 1 + attempt * 100000
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run_dir), str(start)], stdout=subprocess.PIPE,
                                text=True, env=ENV)
        first = proc.stdout.readline()  # one checkpoint is complete
        assert first.strip() == str(start), first
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        path = checkpoint_dir(run_dir, "recovery")
        assert path is not None
        meta = json.loads((path / "meta.json").read_text())
        state = torch.load(path / "state.pt", weights_only=True)
        assert meta["step"] >= start and state["model"]["weight"].shape == (1024, 1024)


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_path(target).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "earlier",
                                             "command": "linearize x"}))
    with DirectoryLock(target, "--out") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        from linearize.errors import RunLockedError

        with pytest.raises(RunLockedError, match=rf"--out {target} is in use by another run \(pid {os.getpid()} on"):
            DirectoryLock(target, "--out").acquire()
    assert not lock_path(target).exists()


def test_a_signal_outside_training_stops_at_once_and_writes_nothing(work):
    out = work / "early"
    proc = subprocess.Popen(command(work, "early"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=work)
    line = proc.stdout.readline()  # "loading ..." : the run is inside the command, before any training
    assert line.startswith("loading"), line
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert not out.exists() and not lock_path(out).exists() and not lock_path(work / "early.train").exists()
