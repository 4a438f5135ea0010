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
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into spare room instead of concatenating: DynamicLayer's
    `torch.cat` copies the whole cache at every step, ~20% of a batch-8 decode step on a CPU.
    Room doubles when full; `keys`/`values` are views of the filled part."""

    def __init__(self):
        super().__init__()
        self._k = self._v = None
        self._len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._k is None or self._len + n > self._k.shape[-2]:
            self._grow(2 * (self._len + n) + 32)
            if self._k is None:
                self._k, self._v = _empty_like(key_states, 2 * n + 32), _empty_like(value_states, 2 * n + 32)
        self._k[:, :, self._len:self._len + n] = key_states
        self._v[:, :, self._len:self._len + n] = value_states
        self._len += n
        self.keys, self.values = self._k[:, :, :self._len], self._v[:, :, :self._len]
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New contents (rows joined, dropped or trimmed), with room for 32 more steps."""
        self._k, self._v = _empty_like(keys, keys.shape[-2] + 32), _empty_like(values, values.shape[-2] + 32)
        self._len = 0
        self.update(keys, values)

    def _grow(self, room: int) -> None:
        if self._k is None:
            return
        k, v = _empty_like(self._k, room), _empty_like(self._v, room)
        k[:, :, :self._len], v[:, :, :self._len] = self._k[:, :, :self._len], self._v[:, :, :self._len]
        self._k, self._v = k, v


def _empty_like(t: torch.Tensor, length: int) -> torch.Tensor:
    return t.new_empty(*t.shape[:-2], length, t.shape[-1])


def new_cache(config) -> DynamicCache:
    """A DynamicCache of GrowingLayers for a model whose cache supports row operations."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def _set(layer, keys: torch.Tensor, values: torch.Tensor) -> None:
    if isinstance(layer, GrowingLayer):
        layer.replace(keys, values)
    else:
        layer.keys, layer.values = keys, values


def config_supports_row_ops(config) -> bool:
    """Whether the cache transformers builds for this model config has only plain DynamicLayers."""
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a model type DynamicCache does not know: assume nothing
        return False
    return bool(layers) and all(type(layer) in (DynamicLayer, GrowingLayer) for layer in layers)


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
        _set(layer, torch.cat([_pad_left(layer.keys, width), _pad_left(new.keys, width)], dim=0),
             torch.cat([_pad_left(layer.values, width), _pad_left(new.values, width)], dim=0))
    return torch.cat([pad_mask_left(mask, width), pad_mask_left(new_mask, width)], dim=0)


def select(cache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep only `rows` (in place); returns their mask."""
    index = torch.tensor(rows, dtype=torch.long, device=mask.device)
    for layer in cache.layers:
        _set(layer, layer.keys.index_select(0, index), layer.values.index_select(0, index))
    return mask.index_select(0, index)


def trim(cache, mask: torch.Tensor) -> torch.Tensor:
    """Cut the leading columns that every row has as padding (in place); returns the mask."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else mask.shape[1]
    if first == 0:
        return mask
    for layer in cache.layers:
        _set(layer, layer.keys[:, :, first:], layer.values[:, :, first:])
    return mask[:, first:]
