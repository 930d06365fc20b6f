"""The one error type for bad input: its message says what is wrong and how to fix it, in one line."""


class FairError(Exception):
    """Bad input or a broken environment; the CLI prints it as one line and exits with code 2."""

    user_error = True  # any exception class with this flag prints as one line (results/ has its own)
