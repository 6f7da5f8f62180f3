"""Error types shared by the library and the command line.

``UserError`` is a ``ValueError``: library functions raise it (or a plain ``ValueError``) for bad
input, naming the offending argument; the CLI prints its message as one line and exits with code 2.
"""


class UserError(ValueError):
    """Bad input from the user: a malformed range, a missing file, wrong shapes, NaN in data."""


def require(condition: bool, message: str) -> None:
    """Raise ``UserError(message)`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
