"""The workbench's one user-error type and the helpers that put an exception in one line."""


def first_line(e: BaseException) -> str:
    """An exception's first message line (its type name when the message is empty), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def disk_full(e: BaseException) -> bool:
    """True when `e`, or an exception it was raised from, says the disk (or quota) is full.

    OSError carries ENOSPC/EDQUOT; SQLite's "database or disk is full" reaches us wrapped by
    SQLAlchemy and MLflow, so the chain is walked and its messages read.
    """
    import errno

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(e) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def full_reason(e: BaseException) -> str:
    """The line of `e`'s chain that says the disk is full (SQLAlchemy puts its own note first), else `first_line(e)`."""
    import errno

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return first_line(cur)
        for line in str(cur).splitlines():
            if "database or disk is full" in line or "No space left on device" in line:
                return line.strip()
        cur = cur.__cause__ or cur.__context__
    return first_line(e)


class UserError(ValueError):
    """A problem with what the user asked for: the CLI prints one line per problem and exits 2.

    `UserError("message")` is one problem; `UserError([line, ...])` several, each naming what is
    wrong (a config's fields: `workbench.config.ConfigError`).
    """

    def __init__(self, problems: str | list[str]):
        self.lines = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.lines))

    def __reduce__(self):  # a trial's child process sends it back pickled: keep the lines, not their join
        return type(self), (self.lines,)
