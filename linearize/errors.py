"""Errors the CLI reports as one ``error:`` line and exit status 2 (the user's input is the cause).

Importing this module is cheap (no torch, no transformers), so the CLI can name these classes
before it decides whether a command needs the heavy libraries at all.
"""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class LinearizeError(Exception):
    """Expected failure caused by the user's input (a path, a recipe, a model)."""


class ModelNotFoundError(LinearizeError):
    """A model path that does not exist, or a Hub id that cannot be fetched."""


class RecipeError(LinearizeError, ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


class UnsupportedModelError(LinearizeError, ValueError):
    """The model's architecture has no surgery pass (or it is converted already)."""


class OutputError(LinearizeError):
    """An output location the command must not (or cannot) write: the user's files, the teacher, the cwd."""


class RunLockedError(LinearizeError):
    """Another live run uses the same output or run directory."""


class ResumeError(LinearizeError):
    """``--resume`` from checkpoints that were trained from other inputs or settings."""


class ModelFileError(LinearizeError):
    """A model file that exists but cannot be used: corrupt or truncated weights, a config.json that is
    not JSON or names an unknown model_type, a .gguf file that is not GGUF."""


class DataError(LinearizeError):
    """Training data that cannot be used (missing, malformed, empty, wrong columns, too short)."""
