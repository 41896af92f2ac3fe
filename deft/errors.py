"""User-facing errors (light module: the CLI catches these without importing torch)."""


class DataError(ValueError):
    """A dataset cannot be imported as given; the message says how to fix it."""


class ModelLoadError(RuntimeError):
    """A CLIP checkpoint could not be loaded; the message says how to fix it."""


class RunError(ValueError):
    """A run directory is missing or incomplete; the message says what to do."""


class ReviewError(ValueError):
    """A review action cannot be applied (unknown sample or class, bad action)."""
