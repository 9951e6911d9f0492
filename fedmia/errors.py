"""User-facing errors.

A `FedmiaError` means the input (a flag, a config file, the data, a client's update) is wrong
in a way the user can fix. The CLI prints its message as one line and exits with code 2,
so every message names the problem and the fix.
"""


class FedmiaError(Exception):
    """A problem with the user's input, with a one-line message that says how to fix it."""
