"""The tasks: ``names.py`` describes every task without torch (what ``data_modules``, the demo,
``study/``, ``analysis/`` and the Makefile read: ``python -m lightning_vl.tasks.names``);
``specs.py`` adds what a model needs (heads, loss, metrics) as one ``TaskSpec`` per task, with the
task metrics (``metrics.py``) and the pre-training task's heads and objectives (``pretraining.py``,
``optimal_transport.py``).

This file imports nothing: ``lightning_vl.tasks.names`` must load with the standard library alone.
"""
