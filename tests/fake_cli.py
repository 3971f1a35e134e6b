"""`python -m tests.fake_cli sweep STUDY.yaml ...`: `dispo-wb` whose sweeps train on tests/fake_trainer.py.

For tests and benchmarks that run a sweep as its own process (kills, several hosts): the
trainer is passed to the CLI as a callable (`SweepHooks`), not named by a string.
"""

from __future__ import annotations

from tests.fake_trainer import train
from workbench.cli.app import app
from workbench.cli.sweep import SweepHooks


def main() -> None:
    app(obj=SweepHooks(train_fn=train))


if __name__ == "__main__":
    main()
