"""``python -m skill_neurons ...`` = ``skill-neurons ...``."""

from skill_neurons.cli import main

main()
