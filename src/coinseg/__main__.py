"""``python -m coinseg``: the command line (also what ``torchrun ... -m coinseg train ...`` starts on each rank)."""

from coinseg.cli import app

app(prog_name="coinseg")
