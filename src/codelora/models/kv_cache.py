"""Row operations on a transformers DynamicCache, for a batch whose rows come and go.

Every row is left-padded to the batch's width W: keys/values are [rows, heads, W, dim] per layer
and a [rows, W] attention mask marks the real positions. A row that finishes is dropped
(`select`), new rows are appended after padding both sides to one width (`join`), and columns
that no remaining row uses are cut off the left (`trim`), so the width follows the longest row.
Only plain DynamicLayer caches have this layout; others (sliding windows, linear attention) are
reported by `config_supports_row_ops` and then run one sequence at a time.
"""

from __future__ import annotations

import torch


def config_supports_row_ops(config) -> bool:
    """Whether the cache transformers builds for this model config has only plain DynamicLayers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a model type DynamicCache does not know: assume nothing
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero columns on the left of a [rows, heads, T, dim] tensor up to `width`."""
    missing = width - t.shape[-2]
    if missing <= 0:
        return t
    pad = t.new_zeros(*t.shape[:-2], missing, t.shape[-1])
    return torch.cat([pad, t], dim=-2)


def pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing <= 0 else torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)


def join(cache, mask: torch.Tensor, new_cache, new_mask: torch.Tensor) -> torch.Tensor:
    """Append `new_cache`'s rows to `cache` (in place); returns the joined mask."""
    width = max(mask.shape[1], new_mask.shape[1])
    for layer, new in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(new.keys, width)], dim=0)
        layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(new.values, width)], dim=0)
    return torch.cat([pad_mask_left(mask, width), pad_mask_left(new_mask, width)], dim=0)


def select(cache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep only `rows` (in place); returns their mask."""
    index = torch.tensor(rows, dtype=torch.long, device=mask.device)
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
    return mask.index_select(0, index)


def trim(cache, mask: torch.Tensor) -> torch.Tensor:
    """Cut the leading columns that every row has as padding (in place); returns the mask."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else mask.shape[1]
    if first == 0:
        return mask
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, first:].contiguous()
        layer.values = layer.values[:, :, first:].contiguous()
    return mask[:, first:]
