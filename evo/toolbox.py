"""DEAP glue: the Individual class (created once) and a toolbox built from the config."""
from __future__ import annotations

from deap import base, creator, tools

from evo.config import SearchSettings
from records import Genome


class GenomeHolder:
    """Base of the DEAP Individual: a genome plus its DEAP fitness (set by `creator`)."""

    def __init__(self, genome: Genome):
        self.genome = genome

    def __repr__(self) -> str:
        return f"Individual({self.genome.id}, fitness={self.fitness.values})"


if not hasattr(creator, "EvoFitness"):
    creator.create("EvoFitness", base.Fitness, weights=(1.0,))
    creator.create("Individual", GenomeHolder, fitness=creator.EvoFitness)


def make_individual(genome: Genome, score: float | None) -> "creator.Individual":
    """Wrap a genome; a scored genome gets a valid DEAP fitness."""
    individual = creator.Individual(genome)
    if score is not None:
        individual.fitness.values = (score,)
    return individual


def build_toolbox(search: SearchSettings) -> base.Toolbox:
    """A toolbox whose `select(individuals, k)` is the configured DEAP selection operator."""
    toolbox = base.Toolbox()
    toolbox.register("select", getattr(tools, search.selection.operator), **search.selection.args)
    toolbox.register("hall_of_fame", tools.HallOfFame, search.elitism, similar=lambda a, b: a.genome.id == b.genome.id)
    return toolbox
