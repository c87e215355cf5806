"""Tables (leaderboard, significance), plots, the HTML report and the regression gate."""

from .build import Report, read_run, write_report
from .compare import compare, format_comparison, read_leaderboard
from .tables import bootstrap_ci, holm, leaderboard, paired_wilcoxon, significance

__all__ = [
    "Report",
    "bootstrap_ci",
    "compare",
    "format_comparison",
    "holm",
    "leaderboard",
    "paired_wilcoxon",
    "read_leaderboard",
    "read_run",
    "significance",
    "write_report",
]
