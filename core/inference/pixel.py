"""Models of the pixel kind: one window per classified pixel, around it."""
import numpy as np

from .. import torch_compat
from ..devices import require_finite_scores, to_device
from ..feedback import Reporter
from .blocks import Block, device_bands, device_windows


def classify_pixels(model, block: Block, device, batch_size: int, patch: int,
                    class_count: int, reporter: Reporter):
    """(probabilities (K, h, w) float32 with NaN where not classified, pattern of the
    anchors (h, w), number classified) for one block. The device is waited for once."""
    torch = torch_compat.import_torch()
    height, width, pattern = block.height, block.width, block.pattern
    row0, col0 = block.row0, block.col0
    selectable = np.zeros((height, width), dtype=bool)
    selectable[np.ix_(np.unique(block.anchor_rows) - row0,
                      np.unique(block.anchor_cols) - col0)] = True
    selectable &= pattern > 0
    a_rows = (block.anchor_rows - row0)[:, None]
    a_cols = (block.anchor_cols - col0)[None, :]
    anchor_pattern = np.where(selectable, pattern, 0)[a_rows, a_cols]
    todo_r, todo_c = np.nonzero(selectable)
    probabilities = np.full((class_count, height, width), np.nan, dtype=np.float32)
    if todo_r.size == 0:
        return probabilities[:, a_rows, a_cols], anchor_pattern, 0
    tensors = device_bands(block, device)
    rows_all = to_device(torch.from_numpy(todo_r), device)
    cols_all = to_device(torch.from_numpy(todo_c), device)
    codes_all = torch.from_numpy(pattern[todo_r, todo_c])
    ramp = torch.arange(patch, device=device)
    results = []
    with torch.no_grad():
        for start in range(0, todo_r.size, batch_size):
            reporter.step(start, todo_r.size)
            stop = start + batch_size
            windows = device_windows(tensors, rows_all[start:stop], cols_all[start:stop], ramp)
            logits = model(windows, codes_all[start:stop])
            results.append(torch.softmax(logits, dim=1))
    result = torch.cat(results).cpu().numpy()     # the one wait for the device per block
    require_finite_scores(bool(np.isfinite(result).all()), model.compute_dtype)
    probabilities[:, todo_r, todo_c] = result.T
    return probabilities[:, a_rows, a_cols], anchor_pattern, int(todo_r.size)
