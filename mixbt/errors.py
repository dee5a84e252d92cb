"""The project's error class: a check this code makes on purpose.

A `MixBTError` is shown to the user as one line (`error: ...`) with what to do; every
other exception (a bug, torch's own errors) keeps its traceback.
"""


class MixBTError(Exception):
    """Bad input or a state the user can fix: the message says what is wrong and the fix."""


class CheckpointError(MixBTError):
    """A checkpoint that cannot be read, loaded or written as it is: the message names the file."""
