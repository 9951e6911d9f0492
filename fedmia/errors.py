"""User-facing errors.

A `FedmiaError` means the input (a flag, a config file, the data, a client's update) is wrong
in a way the user can fix. The CLI prints its message as one line and exits with code 2,
so every message names the problem and the fix.
"""


class FedmiaError(Exception):
    """A problem with the user's input, with a one-line message that says how to fix it."""


def one_line(error: BaseException) -> str:
    """An exception's text on one line, for a FedmiaError message built around it (the CLI
    prints one line); a KeyError's text is just the key, so it says what is missing."""
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r} entry"
    return " ".join(str(error).split()) or type(error).__name__
