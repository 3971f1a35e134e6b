"""The workbench inside verl: policy losses, their config, the launcher and the metric keys."""
