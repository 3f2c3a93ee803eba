"""Box geometry shared by the data (RefCOCO+'s training targets) and the model's metrics
(``lightning_vl.tasks.metrics.GroundingAccuracy`` imports it from here: dependencies run one way,
``lightning_vl`` -> ``data_modules``)."""
from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of boxes ``(..., 4)`` in x1, y1, x2, y2, broadcast like ``a - b``.

    Continuous coordinates, no "+1": ``[0, 0, 2, 1]`` has area 2 (UNITER's ``computeIoU`` adds 1 to
    widths and heights). Boxes without area give 0, never NaN. RefCOCO+'s training targets and its
    accuracy both use this one definition."""
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError(f"box_iou: boxes have shapes {tuple(a.shape)} and {tuple(b.shape)}, expected (..., 4) "
                         "x1, y1, x2, y2")
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
