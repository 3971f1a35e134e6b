"""Figures of `dispo-wb report`; workbench/report/page.py assembles them into the page."""
