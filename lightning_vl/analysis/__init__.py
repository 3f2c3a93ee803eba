"""Analysis of finished runs (no training, no data loading): mask overlap (``overlap``), the
study's tables (``tables``), figures (``figures``, matplotlib, imported on use) and a report folder
(``report.write_report``)."""
from .overlap import Counts, MaskMismatch, OverlapAnalysis, PackedMask, chance_hamming, chance_iou, chance_overlap, \
    layer_index, layer_type, pair_overlap
from .report import write_report
from .tables import Cell, Record, Table, rewind_table, table1, table2, table3, ticket_sparsity, transfer_matrix

__all__ = [
    "Cell", "Counts", "MaskMismatch", "OverlapAnalysis", "PackedMask", "Record", "Table", "chance_hamming",
    "chance_iou", "chance_overlap", "layer_index", "layer_type", "pair_overlap", "rewind_table", "table1", "table2",
    "table3", "ticket_sparsity", "transfer_matrix", "write_report",
]
