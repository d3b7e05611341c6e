"""Reports: a self-contained HTML page with tables and plots; `build_run_report` makes the one of `mixq run`."""

from mixq.report.html import Report
from mixq.report.run_report import DesignView, build_run_report

__all__ = ["DesignView", "Report", "build_run_report"]
