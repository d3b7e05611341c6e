"""Reports: a self-contained HTML page with tables and plots."""

from mixq.report.html import Report

__all__ = ["Report"]
