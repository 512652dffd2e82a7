"""Errors that mean "the user's input is wrong": the CLI prints the message as one line and exits 2."""


class UserError(Exception):
    """Bad input (unknown variant, malformed spec, bad flag value, unwritable folder...).

    The message must name the problem and what to do about it, in one line.
    """

    exit_code = 2
