"""Errors the CLI reports as one clear line and a non-zero exit code."""


class LinearizeError(Exception):
    """Expected failure caused by the user's input (a path, a recipe, a model)."""


class ModelNotFoundError(LinearizeError):
    """A model path that does not exist, or a Hub id that cannot be fetched."""
