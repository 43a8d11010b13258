"""Text embeddings computed once per distinct string (the text encoder is frozen).

QaTa has 301 distinct descriptions for 7145 images: embedding each once instead of per batch
takes the text encoder off the training path entirely.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable

import torch

__all__ = ["TextEmbeddingCache"]


class TextEmbeddingCache:
    """Maps text -> (T, D) embedding, computing missing ones in batches; LRU-bounded.

    Args:
        encode: a function list[str] -> (B, T, D) tensor (the frozen text encoder).
        max_items: the most embeddings kept (least recently used ones are dropped).
        batch_size: texts encoded per call.
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], max_items: int = 10000, batch_size: int = 64) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.encode = encode
        self.max_items = max_items
        self.batch_size = batch_size
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, texts: Iterable[str]) -> None:
        """Embeds every text not cached yet."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._items))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i : i + self.batch_size]
            embedded = self.encode(chunk).detach().cpu()
            self.misses += len(chunk)
            for text, emb in zip(chunk, embedded):
                self._items[text] = emb
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), T, D) embeddings of the texts, computing the missing ones."""
        self.add(texts)
        out = []
        for t in texts:
            self._items.move_to_end(t)
            out.append(self._items[t])
        return torch.stack(out)
