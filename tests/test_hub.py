"""`linearize push` against a real HTTP server on loopback (tests/hub_server.py).

One push runs the installed console script in a subprocess with ``HF_ENDPOINT`` set (as a user
would); the failure/retry cases run the same click command in-process, pointed at the fake Hub
through ``HF_ENDPOINT`` (read when the push starts) and with huggingface_hub's retry sleeps
recorded instead of slept.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from hub_server import FakeHub  # noqa: E402

TOKEN = "hf_test_token"
KNOWN_KINDS = {"create", "validate-yaml", "branch", "preupload", "commit", "info", "resolve", "agent-harnesses"}


def snapshot(directory: Path) -> dict:
    """Every entry under ``directory`` (hidden ones too) with its content hash, mtime and mode."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[path.relative_to(directory).as_posix()] = (digest, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved tiny converted model (real save_model output: binary safetensors, code, card)."""
    from tiny_models import tiny_model

    from linearize import AttentionSpec, linearize_model
    from linearize.export import save_model
    from test_export import tiny_tokenizer

    teacher = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = linearize_model(tiny_model("llama"), AttentionSpec(), recipe="liger-gla", teacher=teacher)
    out = save_model(model, tiny_tokenizer(), tmp_path_factory.mktemp("push") / "tiny-liger",
                     report={"teacher": teacher, "recipe": "liger-gla"})
    (out / ".README.md.partial").write_text("a hidden temporary file that must not be uploaded\n")
    (out / "checkpoints" / "step-1").mkdir(parents=True)  # training leftovers of a run directory
    (out / "checkpoints" / "step-1" / "optimizer.pt").write_bytes(b"\x80\x04 not for the Hub")
    return out


def published(directory: Path) -> dict[str, bytes]:
    """What a push of ``directory`` must upload: its top-level, non-hidden files."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub; this process's huggingface_hub pointed at it, online, with a token, never sleeping."""
    import huggingface_hub.constants as constants
    import huggingface_hub.utils._http as hf_http

    with FakeHub(tokens=(TOKEN,)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)  # best-effort registry fetches stay on loopback
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
        server.sleeps = []
        real_time = hf_http.time
        fake_time = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if k[:2] != "__"})
        fake_time.sleep = server.sleeps.append
        monkeypatch.setattr(hf_http, "time", fake_time)
        yield server
    assert {kind for _, kind, _, _ in server.state.requests} <= KNOWN_KINDS, server.state.requests


def push(*args):
    from linearize.cli import main

    return CliRunner().invoke(main, ["push", *map(str, args)])


def test_push_cli_subprocess_uploads_byte_identical_files(checkpoint, tmp_path):
    before = snapshot(checkpoint)
    with FakeHub(tokens=(TOKEN,)) as server:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and not k.startswith("HF_TOKEN")}
        env.update(HF_ENDPOINT=server.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf"))
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        linearize_bin = Path(sys.executable).with_name("linearize")
        proc = subprocess.run(
            [str(linearize_bin), "push", str(checkpoint), "--repo", "me/tiny-liger", "--private", "--revision", "dev"],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pushed" in proc.stdout and "me/tiny-liger@dev" in proc.stdout
        assert "checkpoints/step-1/optimizer.pt" in proc.stdout  # reported as not uploaded
        state = server.state
        repo = state.repos["me/tiny-liger"]
        assert repo.private is True
        expected = published(checkpoint)
        assert state.files("me/tiny-liger", "dev") == expected  # byte-identical, nothing hidden uploaded
        assert state.files("me/tiny-liger", "main") == {}  # pushed to the branch, not main
        assert {"model.safetensors", "README.md", "modeling_linearized.py", "config.json"} <= set(expected)
        assert len(repo.commits) == 1
        kinds = [kind for _, kind, _, _ in state.requests]
        assert {"create", "branch", "preupload", "commit"} <= set(kinds) <= KNOWN_KINDS
        assert len(kinds) <= 10, kinds
    assert snapshot(checkpoint) == before


@pytest.mark.parametrize("where", ["bad token", "commit refused"])
def test_push_auth_failure_is_clear_and_retry_succeeds(checkpoint, hub, where):
    before = snapshot(checkpoint)
    if where == "bad token":
        hub.state.tokens = {"someone-else"}
    else:
        hub.state.fail("commit", 401, times=1)
    result = push(checkpoint, "--repo", "me/tiny")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "HTTP 401" in lines[0] and "HF_TOKEN" in lines[0]
    assert hub.state.count("commit") <= 1  # an auth failure is not retried
    assert not any(repo.branches["main"] for repo in hub.state.repos.values())
    assert snapshot(checkpoint) == before

    hub.state.tokens = {TOKEN}
    result = push(checkpoint, "--repo", "me/tiny")
    assert result.exit_code == 0, result.output
    assert hub.state.files("me/tiny") == published(checkpoint)
    assert snapshot(checkpoint) == before


def test_push_server_failure_is_bounded_clear_and_retry_succeeds(checkpoint, hub):
    before = snapshot(checkpoint)
    hub.state.fail("commit", 500)  # the Hub is down for commits until cleared
    result = push(checkpoint, "--repo", "me/tiny")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and "HTTP 500" in result.output
    assert "run the same command again" in result.output
    # huggingface_hub retries a failed commit a bounded number of times (exponential backoff), then gives up
    assert 2 <= hub.state.count("commit") <= 6
    assert len(hub.sleeps) == hub.state.count("commit") - 1 and max(hub.sleeps) <= 8
    assert hub.state.files("me/tiny") == {}
    assert snapshot(checkpoint) == before

    # The Hub recovers: the same command succeeds; a transient 503 on preupload is retried inside one push.
    hub.state.clear_failures()
    hub.state.fail("preupload", 503, times=1)
    result = push(checkpoint, "--repo", "me/tiny")
    assert result.exit_code == 0, result.output
    expected = published(checkpoint)
    assert hub.state.files("me/tiny") == expected
    assert len(hub.state.repos["me/tiny"].commits) == 1

    # Pushing again changes nothing on the Hub (unchanged files are skipped, no empty commit).
    result = push(checkpoint, "--repo", "me/tiny")
    assert result.exit_code == 0, result.output
    assert len(hub.state.repos["me/tiny"].commits) == 1
    assert hub.state.files("me/tiny") == expected
    assert snapshot(checkpoint) == before


def test_push_user_errors_send_nothing(checkpoint, hub, tmp_path, monkeypatch):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    cases = [
        ((not_a_model, "--repo", "me/x"), "no config.json"),
        ((checkpoint, "--repo", "no-namespace"), "ORG/NAME"),
    ]
    for args, message in cases:
        result = push(*args)
        assert result.exit_code == 2 and result.output.startswith("error:") and message in result.output, result.output
    monkeypatch.delenv("HF_TOKEN")
    result = push(checkpoint, "--repo", "me/x")
    assert result.exit_code == 2 and "no Hugging Face token" in result.output, result.output
    assert [kind for _, kind, _, _ in hub.state.requests if kind != "agent-harnesses"] == []


def test_push_refuses_links_to_files_outside_the_directory(checkpoint, hub, tmp_path):
    """A link to an outside file would publish that file: refused before anything is sent; a link to a
    file inside the directory is published as that file."""
    import shutil

    model_dir = tmp_path / "tiny-liger"
    shutil.copytree(checkpoint, model_dir, ignore=shutil.ignore_patterns("checkpoints", ".*"))
    secret = b"PRIVATE KEY material that must never leave this machine\n"
    (tmp_path / "secret.txt").write_bytes(secret)
    before = snapshot(model_dir)
    (model_dir / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (model_dir / "extra.md").symlink_to("../secret.txt")
    (model_dir / "dangling.json").symlink_to(tmp_path / "gone.json")
    result = push(model_dir, "--repo", "me/tiny")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "symbolic links to files outside the directory" in lines[0]
    for name in ("notes.txt", "extra.md", "dangling.json"):
        assert name in lines[0]
    assert [kind for _, kind, _, _ in hub.state.requests if kind != "agent-harnesses"] == []  # nothing sent
    assert not hub.state.repos

    for name in ("notes.txt", "extra.md", "dangling.json"):
        (model_dir / name).unlink()
    assert snapshot(model_dir) == before
    (model_dir / "MODEL_CARD.md").symlink_to("README.md")  # inside the directory: uploaded as its target
    result = push(model_dir, "--repo", "me/tiny")
    assert result.exit_code == 0, result.output
    files = hub.state.files("me/tiny")
    assert files["MODEL_CARD.md"] == (model_dir / "README.md").read_bytes()
    assert not any(secret in content for content in files.values())
