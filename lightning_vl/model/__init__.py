"""The models: the backbone contract (``backbone.py``), one readable file per backbone (``uniter.py``), the task heads on top of it
(``heads.py``), reading released weights (``checkpoints.py``) and writing them back in a released
layout (``export.py``). A second backbone goes here as one more file beside ``uniter.py``.

Model code imports no training, lottery, study, analysis or command code (tests/test_dependencies.py).
"""
