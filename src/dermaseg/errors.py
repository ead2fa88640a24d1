"""The one exception type users see: a message that names the file or field and what is wrong."""


class DermasegError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits non-zero."""

    exit_code = 1


class UsageError(DermasegError):
    """The command was called wrongly (bad option value, missing folder); exit code 2."""

    exit_code = 2
