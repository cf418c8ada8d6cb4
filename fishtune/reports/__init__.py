"""The reports: tables, figures and summaries built from result files, never from a training run.

aggregate (the paper's tables and Figure 3), mask_report (masks compared with paired tests, their
placement and overlap), sweep_summary (what became of a sweep), paper (+ paper_data/: the paper's
published numbers), ratios (trainable-parameter ratios from architecture configs), study and study_why
(the seeded study and its mechanism arms), parity (two sets of runs that differ in one setting), and
stats (the intervals and tests they share). They read result files through fishtune.harness.results
and may use the harness's tables (tasks, schedules, methods); they import nothing of its training loop
(harness.train, harness.run).
"""
