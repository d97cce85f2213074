"""`evo bench`: search strategies compared on paired seeds at an equal budget, with statistics and reports.

config (the bench TOML and its matrix of runs) -> runner (the runs, resumable, evaluations shared
across runs) -> events (one row per charged evaluation) -> stats -> report (HTML, Markdown, IOH export).
"""
