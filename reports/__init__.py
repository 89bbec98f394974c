"""Reports for papers, built from the results store (DESIGN section 8).

- :mod:`reports.cells`: the store as a tidy per-cell table (pandas), with labels and group ids; the CSV.
- :mod:`reports.stats`: mean and 95 % Student-t confidence interval over seeds.
- :mod:`reports.leaderboard`: ranked tables per (profile, task, attack); Markdown.
- :mod:`reports.latex`: the same tables as booktabs LaTeX.
- :mod:`reports.plots`: trade-off (teacher vs student drop) and bar plots per task.
- :mod:`reports.grid`: the visual grid of one test image per defense.
- :mod:`reports.html`: one self-contained HTML page.
- :mod:`reports.build`: ``bench report``, which writes all of them.
"""

from reports.build import FORMATS, Report, build_report, parse_formats

__all__ = ["FORMATS", "Report", "build_report", "parse_formats"]
