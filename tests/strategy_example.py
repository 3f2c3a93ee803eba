"""A pruning strategy defined outside the package, for ``--imp.method tests.strategy_example.SmallestRowFirst``."""
from lightning_vl.pruning import Strategy


class SmallestRowFirst(Strategy):
    """Prunes whole rows, the row of smallest summed |w| first (``rows``: an option, to show one)."""

    name = "smallest-row-first"
    description = "whole rows by their summed |w|"

    def __init__(self, rows: int = 1):
        self.rows = rows

    def scores(self, inputs, base):
        return {k: w.abs().sum(-1, keepdim=True).expand_as(w).clone() for k, w in inputs.weights.items()}
