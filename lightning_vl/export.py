"""The old import path of :mod:`lightning_vl.model.export`, kept so that what was written with it still
loads: a run folder's ``config.yaml`` and ``identity.json`` record a callback under the path its command
named (``--trainer.callbacks+=lightning_vl.export.ExportWeights``), and ``lightning-vl branch --from``
and ``--config <run>/config.yaml`` parse that file again. New code imports ``lightning_vl.model.export``;
run identities name the class by this path whichever of the two a command uses
(``lightning_vl.lottery.identity.MOVED_CLASS_PATHS``)."""
from lightning_vl.model.export import LAYOUTS, ExportWeights, export  # noqa: F401

__all__ = ["LAYOUTS", "ExportWeights", "export"]
