"""``python -m lightning_vl.pruning``: the registered pruning strategies and their options."""
from . import describe

print("pruning strategies (--imp.method NAME or a class path; --imp.options '{name: value}'):")
print(describe())
