"""The only module that talks to MLflow.

Writers for training runs (top), for studies (middle, used by sweep.py) and readers for
reports (bottom, used by report.py). Everything else in the workbench passes plain dicts
and floats here, so a change of tracking backend touches one file.
"""

from __future__ import annotations

# ---- runs: used by trainer.py ----


# ---- studies: used by sweep.py ----


# ---- reading: used by report.py ----
