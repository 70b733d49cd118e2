"""Errors caused by what the user asked for, reported as one line without a traceback."""


class UserError(Exception):
    """Bad input from the user: unknown names, missing files, mismatched shapes.

    The CLI prints ``hpmkd: error: <message>`` on stderr and exits with code 2. Raise it before
    any training starts, with a message that names the offending value and the valid choices.
    """


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> UserError:
    return UserError(f"unknown {kind} '{name}'; valid: {', '.join(sorted(valid))}")
