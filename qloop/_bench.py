"""python -m qloop bench: the runner (written below)."""
