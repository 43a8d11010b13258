"""Text embeddings computed once per distinct string (the text encoder is frozen).

QaTa has 301 distinct descriptions for 7145 images: embedding each once instead of per batch
takes the text encoder off the training path entirely.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable

import torch

from tevia.inference.transforms import model_text

__all__ = ["TextEmbeddingCache", "text_table"]


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


def text_table(encode: Callable[[list[str]], torch.Tensor], texts: Iterable[str]) -> tuple[torch.Tensor, dict[str, int]]:
    """The embeddings of distinct descriptions, each as the model encodes it (:func:`model_text`).

    Computed once, in batches, through :class:`TextEmbeddingCache` (the cache behind
    ``Segmenter.encode_text``), without autograd: the text encoder is frozen.

    Args:
        encode: the frozen text encoder, list[str] -> (B, T, D).
        texts: descriptions, repeats allowed.

    Returns:
        (table, index): table (N, T, D) on the CPU for the N distinct descriptions in sorted
        order; index maps each description (as given) to its row.

    Raises:
        ValueError: no text was given.
    """
    distinct = sorted(set(texts))
    if not distinct:
        raise ValueError("texts must hold at least one description, got none")
    with torch.no_grad():
        table = TextEmbeddingCache(encode, max_items=len(distinct)).get([model_text(t) for t in distinct])
    return table, {text: row for row, text in enumerate(distinct)}
