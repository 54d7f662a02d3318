"""The base class of errors that are the user's to fix (the commands print them as one line, exit code 2)."""


class UserError(Exception):
    """A problem with the user's input, files or environment, explained by the message."""
