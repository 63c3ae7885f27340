"""Errors that users are expected to meet, each carrying a one-line message for the CLI and node.

The CLI prints ``error: <message>`` and exits non-zero for these, without a traceback; anything
else is a bug and keeps its traceback.
"""


class CosmeError(Exception):
    """An expected, user-facing failure (bad file, bad argument, missing bundle part)."""


class CheckpointError(CosmeError):
    """A weights file that cannot be read or does not fit the network it is loaded into."""


class BundleError(CosmeError):
    """A bundle directory or manifest that is missing, malformed or inconsistent."""


class MissingPartError(BundleError):
    """A method needs a bundle part (student, memory, statistics) that the bundle does not have."""


class InputError(CosmeError):
    """An input image or dataset that cannot be read."""
