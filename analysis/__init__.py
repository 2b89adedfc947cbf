"""Analysis of run records: one pandas frame, the published tables (LaTeX + CSV), figures and a notebook.

Import-light: nothing heavy is imported here. Entry points:

- ``analysis.records.load_records(results_dirs)`` -> :class:`~analysis.records.Records` (frame of finished runs,
  failed runs, invalid files, duplicates); ``analysis.records.missing_runs(grid, results_dirs)``.
- ``analysis.build``: the table builders (base-to-novel, ablations, k-shot, cross-dataset, DG, cost, reproduction
  gap, significance); ``analysis.plots``: the figures.
- ``python -m analysis.tables RESULTS_DIR ...``: everything written to a folder with an ``index.md``;
  ``analysis/tables.ipynb`` does the same interactively.
- ``analysis/reference_results.csv``: the papers' numbers with their sources and trust tags (``analysis.reference``).
"""
