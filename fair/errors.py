"""The one error type for bad input: its message says what is wrong and how to fix it, in one line."""


class FairError(Exception):
    """Bad input or a broken environment; the CLI prints it as one line and exits with code 2."""
