def first_line(e: BaseException) -> str:
    """An exception's first message line (its type name when the message is empty), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class UserError(ValueError):
    """A problem with what the user asked for; the CLI prints it in one line and exits 2."""
