"""Entry point of the `verl.plugins` group (pyproject.toml): `import verl` imports this module,
in the driver and in every Ray worker, and it registers one `wb_<objective>` policy loss per
workbench objective. verl logs a failing plugin import at DEBUG only, so the launcher checks the
registry itself before it starts a run (`workbench.engines.verl.launch.check_registered`).
"""

from workbench.engines.verl.losses import register_all

REGISTERED = register_all()
