"""Figures of `dispo-wb report`; workbench/report.py assembles them into the page."""
