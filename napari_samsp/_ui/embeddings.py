"""The embeddings of the planes a widget works on: a small LRU keyed by (image, plane[, window]).

Panels ask for "the embedding of plane z of this image" and decode on it; nothing asks which
image a shared predictor holds. Entries belong to the predictor that made them: after a model
change they are never returned. Qt-free.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable

from ..embedding import Embedding

__all__ = ["PlaneEmbeddings", "plane_key"]


def plane_key(workspace_key: int, z: int | None, window=None) -> tuple:
    """The key of a whole plane, ``(workspace key, z)``, or of a window of it, ``(workspace key, z, window)``."""
    return (workspace_key, z) if window is None else (workspace_key, z, tuple(window))


class PlaneEmbeddings:
    """Embeddings by plane key, for the predictor that made them; the least recently used go first.

    Args:
        max_entries: how many embeddings are kept (each holds the features and the uint8 plane).
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max(1, int(max_entries))
        self._items: OrderedDict[Hashable, tuple[weakref.ref, Embedding]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, predictor, key: Hashable) -> Embedding | None:
        """The embedding of ``key`` made by ``predictor`` (None: not here, or made by another predictor)."""
        item = self._items.get(key)
        if item is None or predictor is None or item[0]() is not predictor:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, predictor, key: Hashable, embedding: Embedding) -> None:
        self._items[key] = (weakref.ref(predictor), embedding)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
