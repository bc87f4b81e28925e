"""qloop's benchmark workloads, one module each (see bench/README.md).

Each runs as ``python -m qloop.bench.<name> --impl NAME [--n N] [--variant V]``
and prints one JSON line; ``python -m qloop bench`` runs them all against the
installed peers.  Nothing heavy is imported at module level: an impl imports
what it measures when it runs.
"""
