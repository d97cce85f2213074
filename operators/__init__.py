"""Variation operators: LLM backends, prompts, parsing, the researcher (mutate / crossover / repair).

Imports only the shared `records`; never `evo`, `fitness` or `archive`.
"""
