"""User-facing errors (light module: the CLI catches these without importing torch).

Every error whose message tells the user what to do derives from :class:`DeftError`, so a
front end catches one class. Each also keeps its built-in base (``ValueError``,
``RuntimeError``) so code that caught those before still does.
"""


class DeftError(Exception):
    """Base of every user-facing deft error: the message says what went wrong and how to fix it."""


class DataError(DeftError, ValueError):
    """A dataset cannot be imported as given; the message says how to fix it."""


class ModelLoadError(DeftError, RuntimeError):
    """A CLIP checkpoint could not be loaded; the message says how to fix it."""


class RunError(DeftError, ValueError):
    """A run directory is missing or incomplete; the message says what to do."""


class ReviewError(DeftError, ValueError):
    """A review action cannot be applied (unknown sample or class, bad action)."""


#: What a front end reports as a one-line message (exit code 2 in the CLI) instead of a traceback:
#: every :class:`DeftError`, plus the built-ins the library raises for bad arguments and missing files.
USER_ERRORS: tuple[type[Exception], ...] = (DeftError, FileNotFoundError, ValueError)
