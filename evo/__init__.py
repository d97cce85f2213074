"""evoarch engine: config, genomes, DEAP toolbox, search loop and command line."""
