"""Save a converted model as an ordinary Hugging Face checkpoint, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_directory


def save_model(model, tokenizer, out_dir: str | Path, report: dict | None = None) -> Path:
    """Write weights (safetensors), config, generation config and tokenizer to ``out_dir``.

    ``report`` (numbers measured by the pipeline) is stored as ``linearize_report.json``.
    Nothing appears at ``out_dir`` unless everything was written.
    """
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if report is not None:
            (tmp / "linearize_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return Path(out_dir).expanduser().resolve()
