"""`python -m workbench.cli` is `dispo-wb`."""
from workbench.cli.app import app

app()
