class UserError(ValueError):
    """A problem with what the user asked for; the CLI prints it in one line and exits 2."""
