"""Studies: YAML grids of lottery runs and branches (``grid``), run here or by many workers
(``runner``), and the index of run folders into records for the report (``index``)."""
from .grid import Cell, Study, expand, load
from .index import records
from .runner import StudyRunner, StudyState

__all__ = ["Cell", "Study", "StudyRunner", "StudyState", "expand", "load", "records"]
