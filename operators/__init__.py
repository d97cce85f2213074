"""Variation operators: LLM backends, prompts, parsing, the researcher (mutate / crossover / repair).

Imports only `evo.genome` from the engine; never `fitness` or `archive`.
"""
