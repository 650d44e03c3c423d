"""``python -m jsarag`` (what ``torchrun -m jsarag ...`` runs)."""

from jsarag.cli import main

main()
