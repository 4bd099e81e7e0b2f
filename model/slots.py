"""What a slot holds besides its code: its namespace, whether it is pinned, and an opaque record.

    namespace  every occupied slot belongs to one (a user, an agent, a session...); "default"
               when a write names none. Reads may search one namespace; a namespace can be
               forgotten whole; LFU eviction may be kept within a namespace's quota.
    pinned     a pinned slot is never evicted (it can still be deleted).
    record     bytes the caller gives with the code (the service stores the JSON of the text
               and payload), kept and handed back as they are: the bank never parses them.

Namespaces are interned: each slot holds an int32 id into a table of names. The state is a few
tensors (`state_tensors`), so a snapshot holds it with the codes:

    namespace        int32 (capacity,)      id of the slot's namespace (0 on free slots)
    pinned           bool  (capacity,)
    record_offsets   int64 (capacity + 1,)  slot i's record is record_data[off[i]:off[i+1]]
    record_sizes     int64 (capacity,)      -1: no record, else its length
    record_data      uint8 (total,)
    namespace_names  uint8 (n,)             the names, as a JSON list (id = position)

Records live in process as one `bytes` object per slot (Python's 33-byte header + its length,
plus an 8-byte list entry; `nbytes` counts them).

Each part is allocated when first used: a bank whose slots are all in the default namespace,
unpinned and without records (`plain`, the image-memory case) holds none of it, costs no byte
per slot, and saves none of these tensors in its snapshots.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from model.enums import DEFAULT_NAMESPACE, check_namespace

__all__ = ["META_KEYS", "SlotMeta", "meta_problem"]

META_KEYS = (
    "namespace",
    "pinned",
    "record_offsets",
    "record_sizes",
    "record_data",
    "namespace_names",
)


class SlotMeta:
    """Namespaces, pins and records of a bank's slots; see the module docstring. The bank
    keeps it consistent with its occupancy (free slots: namespace 0, not pinned, no record)."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        # None until first needed (module docstring)
        self._namespace: Tensor | None = None
        self._pinned: Tensor | None = None
        self.records: list[bytes | None] | None = None
        self.names: list[str] = [DEFAULT_NAMESPACE]
        self._ids = {DEFAULT_NAMESPACE: 0}

    @property
    def plain(self) -> bool:
        """True while no part is allocated: every slot in the default namespace, unpinned,
        without a record, so set / free / stats have nothing to do."""
        return self._namespace is None and self._pinned is None and self.records is None

    @property
    def namespace(self) -> Tensor:
        """int32 (capacity,): each slot's namespace id (allocated on first use)."""
        if self._namespace is None:
            self._namespace = torch.zeros(self.capacity, dtype=torch.int32, device=self.device)
        return self._namespace

    @property
    def pinned(self) -> Tensor:
        """bool (capacity,): which slots are pinned (allocated on first use)."""
        if self._pinned is None:
            self._pinned = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        return self._pinned

    def pinned_or_none(self) -> Tensor | None:
        """The pinned tensor, None while no slot was ever pinned."""
        return self._pinned

    def any_pinned(self) -> bool:
        return self._pinned is not None and bool(self._pinned.any())

    def namespace_of(self, slot: int) -> str:
        return (
            self.names[int(self._namespace[slot])]
            if self._namespace is not None
            else DEFAULT_NAMESPACE
        )

    def is_pinned(self, slot: int) -> bool:
        return self._pinned is not None and bool(self._pinned[slot])

    def record(self, slot: int) -> bytes | None:
        return self.records[slot] if self.records is not None else None

    # ------------------------------------------------------------------ namespaces

    def intern(self, name: str) -> int:
        """The id of a namespace, added to the table when new."""
        found = self._ids.get(name)
        if found is None:
            found = self._ids[name] = len(self.names)
            self.names.append(name)
        return found

    def id_of(self, name: str) -> int | None:
        return self._ids.get(name)

    def in_namespace(self, name: str, occupied: Tensor) -> Tensor:
        """bool (capacity,): the occupied slots of this namespace (all False when unknown)."""
        ns = self._ids.get(name)
        if ns is None:
            return torch.zeros_like(occupied)
        if self._namespace is None:  # every slot is in the default namespace (id 0)
            return occupied.clone()
        return occupied & (self._namespace == ns)

    # ------------------------------------------------------------------ changes

    def set(
        self,
        idx: Tensor,
        namespace: str,
        records: Sequence[bytes | None] | None,
        pinned: bool,
    ) -> None:
        """What an assign of these slots (n,) stores besides the codes."""
        if namespace != DEFAULT_NAMESPACE or self._namespace is not None:
            self.namespace[idx] = self.intern(namespace)
        if pinned or self._pinned is not None:
            self.pinned[idx] = pinned
        if records is None:
            if self.records is not None:
                for s in idx.tolist():
                    self.records[s] = None
        else:
            if self.records is None:
                self.records = [None] * self.capacity
            for s, r in zip(idx.tolist(), records, strict=True):
                # a copy of exactly its length: bytes from orjson.dumps keep the 4 kB buffer
                # they were written into (measured: 4,098 B of RAM for a 171-byte record)
                self.records[s] = None if r is None else bytes(memoryview(r))

    def pin(self, idx: Tensor, pinned: bool) -> None:
        if pinned or self._pinned is not None:
            self.pinned[idx] = pinned

    def free(self, idx: Tensor) -> None:
        if self._namespace is not None:
            self._namespace[idx] = 0
        if self._pinned is not None:
            self._pinned[idx] = False
        if self.records is None:
            return
        if idx.numel() == self.capacity:
            self.records = [None] * self.capacity
        else:
            for s in idx.tolist():
                self.records[s] = None

    # ------------------------------------------------------------------ facts

    def stats(
        self, occupied: Tensor, counts: Tensor, total_used: int, total_count: int
    ) -> dict[str, dict[str, int]]:
        """Per namespace with at least one occupied slot: used, pinned, count_sum. The bank's
        totals (total_used, total_count) are the default namespace's while every slot is in
        it and none is pinned."""
        out: dict[str, dict[str, int]] = {}
        if self._namespace is None and self._pinned is None:  # all default, none pinned
            if total_used:
                out[DEFAULT_NAMESPACE] = {
                    "used": total_used,
                    "pinned": 0,
                    "count_sum": total_count,
                }
            return out
        ids = self.namespace[occupied]
        if not ids.numel():
            return out
        used = torch.bincount(ids.long(), minlength=len(self.names)).tolist()
        pinned = torch.bincount(
            self.namespace[occupied & self.pinned].long(), minlength=len(self.names)
        ).tolist()
        count_sum = torch.bincount(
            ids.long(), weights=counts[occupied].double(), minlength=len(self.names)
        ).tolist()
        for i, name in enumerate(self.names):
            if used[i]:
                out[name] = {"used": used[i], "pinned": pinned[i], "count_sum": int(count_sum[i])}
        return out

    def nbytes(self) -> int:
        """RAM of the metadata: the per-slot tensors, the record list and its bytes (those
        allocated)."""
        tensors = sum(
            t.numel() * t.element_size() for t in (self._namespace, self._pinned) if t is not None
        )
        if self.records is None:
            return tensors
        return tensors + 8 * self.capacity + sum(33 + len(r) for r in self.records if r is not None)

    # ------------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, Tensor]:
        """The metadata as tensors (module docstring); the record bytes are copied. A plain
        bank has none (its snapshots load as plain)."""
        if self.plain:
            return {}
        records = self.records if self.records is not None else [None] * self.capacity
        sizes = [-1 if r is None else len(r) for r in records]
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + max(size, 0))
        blob = b"".join(r for r in records if r is not None)
        names = json.dumps(self.names).encode()
        return {
            "namespace": self.namespace,
            "pinned": self.pinned,
            "record_offsets": torch.tensor(offsets, dtype=torch.int64, device=self.device),
            "record_sizes": torch.tensor(sizes, dtype=torch.int64, device=self.device),
            "record_data": _bytes_tensor(blob, self.device),
            "namespace_names": _bytes_tensor(names, self.device),
        }

    def adopt(self, state: Mapping[str, Tensor], *, copy: bool) -> None:
        """Take the metadata of a state checked by `meta_problem`."""
        take = (lambda t: t.detach().clone()) if copy else (lambda t: t)
        namespace, pinned = state["namespace"], state["pinned"]
        # a part that holds only defaults is not kept (allocated again when first used)
        self._namespace = take(namespace).to(self.device) if bool(namespace.any()) else None
        self._pinned = take(pinned).to(self.device) if bool(pinned.any()) else None
        data = state["record_data"].cpu().numpy().tobytes()
        offsets = state["record_offsets"].tolist()
        sizes = state["record_sizes"].tolist()
        self.records = None
        if any(size >= 0 for size in sizes):
            self.records = [
                None if size < 0 else data[offsets[i] : offsets[i] + size]
                for i, size in enumerate(sizes)
            ]
        self.names = json.loads(state["namespace_names"].cpu().numpy().tobytes())
        self._ids = {name: i for i, name in enumerate(self.names)}


def _bytes_tensor(data: bytes, device: torch.device) -> Tensor:
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        if data
        else (torch.zeros(0, dtype=torch.uint8, device=device))
    )


def meta_problem(state: Mapping[str, Tensor], capacity: int) -> str | None:
    """Why the metadata tensors of `state` are not a bank's of this capacity, or None. Their
    layout and values: names a JSON list of distinct valid names starting with the default,
    ids within it, records within record_data, free slots without namespace, pin or record."""
    specs = {
        "namespace": (torch.int32, (capacity,)),
        "pinned": (torch.bool, (capacity,)),
        "record_offsets": (torch.int64, (capacity + 1,)),
        "record_sizes": (torch.int64, (capacity,)),
    }
    for key, (dtype, shape) in specs.items():
        t = state[key]
        if t.dtype != dtype or tuple(t.shape) != shape:
            return f"tensor {key!r} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}"
    for key in ("record_data", "namespace_names"):
        t = state[key]
        if t.dtype != torch.uint8 or t.dim() != 1:
            return f"tensor {key!r} is {t.dtype} {tuple(t.shape)}, expected uint8 (n,)"
    try:
        names = json.loads(state["namespace_names"].cpu().numpy().tobytes())
        if not isinstance(names, list) or not names or names[0] != DEFAULT_NAMESPACE:
            raise ValueError("not a list starting with the default namespace")
        for name in names:
            check_namespace(name)
        if len(set(names)) != len(names):
            raise ValueError("a name appears twice")
    except ValueError as e:
        return f"inconsistent state: namespace_names: {e}"
    ns = state["namespace"].cpu()
    if bool((ns < 0).any()) or bool((ns >= len(names)).any()):
        return "inconsistent state: a namespace id outside namespace_names"
    offsets, sizes = state["record_offsets"].cpu(), state["record_sizes"].cpu()
    steps = offsets[1:] - offsets[:-1]
    if (
        int(offsets[0]) != 0
        or not torch.equal(steps, sizes.clamp(min=0))
        or bool((sizes < -1).any())
    ):
        return "inconsistent state: record_offsets do not match record_sizes"
    if int(offsets[-1]) != state["record_data"].numel():
        return "inconsistent state: record_data is not as long as the records"
    occupied = state["occupied"].cpu()
    free = ~occupied
    if bool((ns[free] != 0).any()) or bool(state["pinned"].cpu()[free].any()):
        return "inconsistent state: a free slot with a namespace or a pin"
    if bool((sizes[free] >= 0).any()):
        return "inconsistent state: a free slot with a record"
    return None
