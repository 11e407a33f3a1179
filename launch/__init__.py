"""How jobs start: the `actsparse` command, local torchrun launches, SLURM submission."""
