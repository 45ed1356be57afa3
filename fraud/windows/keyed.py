"""Group a micro-batch by (partition, key) and move each key's state in and out once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fraud.windows.store import StateStore


class KeyedBatch:
    """Slots for the distinct (partition, key) pairs of a batch, in order of first appearance.

    ``group[i]`` is the slot of event i; ``load`` reads every slot's state with one
    ``get_many`` per partition and ``save`` writes them back with one ``put_many`` per partition.
    """

    def __init__(self, partitions: Sequence[int], keys: Sequence[str]) -> None:
        slots: dict[tuple[int, str], int] = {}
        self.group: NDArray[np.int64] = np.empty(len(keys), dtype=np.int64)
        for i, pk in enumerate(zip(partitions, keys, strict=True)):
            self.group[i] = slots.setdefault(pk, len(slots))
        self._by_partition: dict[int, list[tuple[int, bytes]]] = {}
        for (partition, key), slot in slots.items():
            self._by_partition.setdefault(partition, []).append((slot, key.encode()))
        self.size = len(slots)

    def load(self, store: StateStore) -> list[bytes | None]:
        states: list[bytes | None] = [None] * self.size
        for partition, members in self._by_partition.items():
            values = store.get_many(partition, [key for _, key in members])
            for (slot, _), value in zip(members, values, strict=True):
                states[slot] = value
        return states

    def save(self, store: StateStore, new_states: Sequence[bytes]) -> None:
        for partition, members in self._by_partition.items():
            store.put_many(partition, [(key, new_states[slot]) for slot, key in members])
