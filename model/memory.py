"""The paper's memory loop: encode inputs with a codec, keep the codes in a MemoryBank, decode
what a read finds. Production (service/engine.py) runs exactly this code.

    memory = IDRPMemory(model, bank, log=persistence.log)
    memory.write(x, mode="mean")                     # one request
    memory.write_group([Write(x1), Write(x2, "each")])   # many: one encode, one log call
    memory.read(x, top_k=1, min_score=None)          # IDRPReadResult (tensors)
    memory.read_batch([Read(q1), Read(q2, top_k=3)])     # many: one encode, one decode
    memory.search(z, top_k) then memory.touch(slots, written, counted)   # a read over banks

Batched and loggable. A write group checks each request, encodes all of them at once (outside
the lock), checks their codes, plans every slot (model/lfu.py) as if the requests came one at a
time in order, hands the planned operations (model/ops.py) to the durability callback `log`
*before* any mutation, then applies them. A request with bad input fails alone; a failed `log`
fails every request of the group and leaves the bank unchanged. A read batch encodes once,
reads the bank for each run of consecutive requests with the same (top_k, min_score), in queue
order, so slots and counts are exactly those of the same requests made one at a time, gathers
the codes of the hits and decodes them once.

The checks here (model/requests.py holds the request values and their helpers) are the
in-process boundary: rows of d finite numbers, a write mode, top_k and
min_score, and codes the bank can store: finite and within CODE_RANGE x the codec's training
range, so that every stored code decodes to finite numbers. The messages name the request's
item or query.
Thread-safe: one lock guards the bank; encoding and decoding run outside it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from model.bank import MemoryBank, SlotView, WriteResult
from model.enums import DEFAULT_NAMESPACE, stored_slots
from model.errors import BankFull, InvalidInput, NamespaceNotFound
from model.lfu import Plan
from model.ops import WRITE_MODES, Clear, Forget, Free, Op, Pin, combine
from model.requests import (
    CODE_RANGE,
    Codec,
    Found,
    Hit,
    IDRPReadResult,
    Log,
    Read,
    Rows,
    Write,
    as_rows,
    assign_op,
    checked_namespace,
    finite_parts,
    first_bad,
    read_key,
)
from model.rescore import rescore
from model.state import INT8_MAX

__all__ = [
    "CODE_RANGE",
    "Codec",
    "Hit",
    "IDRPMemory",
    "IDRPReadResult",
    "Log",
    "Read",
    "Rows",
    "Write",
    "as_rows",
]


class IDRPMemory:
    """Codec + bank + the loop; see the module docstring. `log` is the durability callback
    (None: nothing is logged); `position` is what it returned last (a WAL's last LSN)."""

    def __init__(
        self,
        model: Codec,
        bank: MemoryBank,
        *,
        log: Log | None = None,
        position: int = 0,
        refine_steps: int = 0,
    ) -> None:
        if model.config.m != bank.m:
            raise ValueError(f"expected a bank with m={model.config.m}, got m={bank.m}")
        self.model = model
        self.bank = bank
        self.d = model.config.d
        self.position = position
        self._log = log
        self._refine_steps = refine_steps
        self._lock = threading.Lock()
        # The codes a write may store (CODE_RANGE x the largest |code| of the codec's training
        # items, per dimension; None for a codec without code_scales)
        scales = getattr(model, "code_scales", None)
        self.code_limit = (
            None if scales is None else scales.detach().float().cpu() * (INT8_MAX * CODE_RANGE)
        )

    def _encode(self, x: Tensor) -> Tensor:
        if self._refine_steps:
            return self.model.encode(x, refine_steps=self._refine_steps).float()  # type: ignore[call-arg]
        return self.model.encode(x).float()

    def _encode_each(self, xs: list[tuple[int, Tensor]]) -> list[tuple[int, Tensor]]:
        """Encode every request's rows in ONE call, then split the codes back per request."""
        if not xs:
            return []
        if len(xs) == 1:  # a lone request: no copy in, no split out
            return [(xs[0][0], self._encode(xs[0][1]))]
        z_all = self._encode(torch.cat([x for _, x in xs]))  # (B, m)
        parts = torch.split(z_all, [x.shape[0] for _, x in xs])
        return [(i, z) for (i, _), z in zip(xs, parts, strict=True)]

    def _commit(self, ops: Sequence[Op]) -> None:
        """Log ops (all or nothing), then apply them. Call under the lock."""
        if self._log is not None:
            self.position = self._log(ops)
        for op in ops:
            self.bank.apply(op)

    # ------------------------------------------------------------------ write

    def write(self, x: Rows, mode: str = "mean") -> WriteResult:
        """Encode x (B, d) and store the codes (mean -> one slot, each -> B slots)."""
        answer = self.write_group([Write(x, mode)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _check_write(self, w: Write) -> Tensor:
        if w.mode not in WRITE_MODES:
            modes = " or ".join(repr(m) for m in WRITE_MODES)
            raise InvalidInput(f"expected mode {modes}, got {w.mode!r}")
        x = as_rows(w.items, "item", self.d)
        if w.mode == "each" and x.shape[0] > self.bank.capacity:
            raise InvalidInput(
                f"mode 'each' needs {x.shape[0]} slots, more than the capacity {self.bank.capacity}"
            )
        checked_namespace(w.namespace)
        stored = stored_slots(x.shape[0], w.mode)
        if w.records is not None and len(w.records) != stored:
            raise InvalidInput(
                f"expected one record per stored slot ({stored}, mode {w.mode!r}), got "
                f"{len(w.records)}"
            )
        return x

    def _storable(self, z: Tensor, mode: str) -> Tensor:
        """The rows a write of codes z stores, checked to fit the bank."""
        bad = first_bad(z)
        if bad is not None:
            raise InvalidInput(
                f"item {bad} cannot be stored: its code is not finite (values far outside "
                "the range the codec was trained on)"
            )
        if self.code_limit is not None:
            over = z.abs().cpu() > self.code_limit
            if bool(over.any()):
                i, j = (int(v) for v in over.nonzero()[0])
                raise InvalidInput(
                    f"item {i} cannot be stored: its code value {float(z[i, j]):.4g} in "
                    f"dimension {j} is outside the codec's range (|z| <= "
                    f"{float(self.code_limit[j]):.4g}, {CODE_RANGE}x the largest code of its "
                    "training items): the item is far from what the codec was trained on"
                )
        rows = combine(z, mode)
        try:
            self.bank.quant.quantise(rows)
        except ValueError:
            raise InvalidInput(
                f"the items' code is too large for the {self.bank.dtype} bank"
            ) from None
        return rows

    def write_group(self, writes: Sequence[Write]) -> list[WriteResult | Exception]:
        """One answer per request, in order: its WriteResult, or the error that refused it
        (InvalidInput alone; the log's error for every request when logging failed)."""
        answers: list[WriteResult | Exception | None] = [None] * len(writes)
        xs: list[tuple[int, Tensor]] = []
        for i, w in enumerate(writes):
            try:
                xs.append((i, self._check_write(w)))
            except InvalidInput as e:
                answers[i] = e
        rows: list[tuple[int, Tensor]] = []
        for i, z in self._encode_each(xs):
            try:
                rows.append((i, self._storable(z, writes[i].mode)))
            except InvalidInput as e:
                answers[i] = e
        if rows:
            self._write_rows(writes, rows, answers)
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]

    def _write_rows(
        self,
        writes: Sequence[Write],
        rows: list[tuple[int, Tensor]],
        answers: list[WriteResult | Exception | None],
    ) -> None:
        with self._lock:
            rows, plans = self._plan(writes, rows, answers)
            if not rows:
                return
            ops: list[Op] = [
                assign_op(p.slots, z, writes[i]) for p, (i, z) in zip(plans, rows, strict=True)
            ]
            try:
                self._commit(ops)
            except Exception as e:  # the bank is unchanged: every request of the group failed
                for i, _ in rows:
                    answers[i] = e
                return
            used = self.bank.used - sum(len(p.slots) - len(p.evicted) for p in plans)
            for (i, _), p in zip(rows, plans, strict=True):
                used += len(p.slots) - len(p.evicted)  # the slots that were free
                answers[i] = WriteResult(slots=p.slots, evicted=p.evicted, used=used)

    def _plan(
        self,
        writes: Sequence[Write],
        rows: list[tuple[int, Tensor]],
        answers: list[WriteResult | Exception | None],
    ) -> tuple[list[tuple[int, Tensor]], list[Plan]]:
        """The slots of every write of the group; a write that cannot be placed (BankFull:
        the bank is full of pinned slots) fails alone, the others are planned without it."""

        def plan(part: list[tuple[int, Tensor]]) -> list[Plan]:
            return self.bank.plan_writes(
                [z.shape[0] for _, z in part],
                [writes[i].namespace for i, _ in part],
                [writes[i].pinned for i, _ in part],
            )

        kept = list(rows)
        while kept:
            try:
                return kept, plan(kept)
            except BankFull:
                pass
            for n in range(1, len(kept) + 1):  # the first write the ones before it leave out
                try:
                    plan(kept[:n])
                except BankFull as e:
                    answers[kept[n - 1][0]] = e
                    del kept[n - 1]
                    break
        return [], []

    # ------------------------------------------------------------------ read

    def read(
        self, x: Rows, top_k: int = 1, min_score: float | None = None, reconstruct: bool = True
    ) -> IDRPReadResult:
        """Encode x (B, d), read the bank, and decode the stored codes of the hits."""
        if isinstance(x, Tensor) and (x.dim() != 2 or x.shape[1] != self.d or x.shape[0] < 1):
            raise InvalidInput(f"expected x of shape (B >= 1, {self.d}), got {tuple(x.shape)}")
        answer = self.read_batch([Read(x, top_k, min_score, reconstruct)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @staticmethod
    def _check_read(r: Read) -> None:
        if isinstance(r.top_k, bool) or not isinstance(r.top_k, int) or r.top_k < 1:
            raise InvalidInput(f"expected top_k to be an int >= 1, got {r.top_k!r}")
        if r.min_score is not None and not math.isfinite(r.min_score):
            raise InvalidInput(f"expected a finite min_score, got {r.min_score}")
        if r.namespace is not None:
            checked_namespace(r.namespace)
        if isinstance(r.rescore, bool) or not isinstance(r.rescore, int) or r.rescore < 0:
            raise InvalidInput(f"expected rescore to be an int >= 0, got {r.rescore!r}")

    def read_batch(self, reads: Sequence[Read]) -> list[IDRPReadResult | Exception]:
        """One answer per request, in order: its result, or the InvalidInput that refused it."""
        answers: list[IDRPReadResult | Exception | None] = [None] * len(reads)
        xs: list[tuple[int, Tensor]] = []
        for i, r in enumerate(reads):
            try:
                self._check_read(r)
                xs.append((i, as_rows(r.queries, "query", self.d, finite=False)))
            except InvalidInput as e:
                answers[i] = e
        xs, refused = finite_parts(xs)  # one NaN / infinity check for the whole batch
        for i, row in refused:
            answers[i] = InvalidInput(f"query {row} contains NaN or infinity")
        items = dict(xs)
        codes, refused = finite_parts(self._encode_each(xs))
        for i, row in refused:
            answers[i] = InvalidInput(
                f"query {row} cannot be read: its code is not finite (values far outside "
                "the range the codec was trained on)"
            )
        spans = [(i, items[i], z) for i, z in codes]
        if spans:
            for i, result in self._read_spans(reads, spans):
                answers[i] = result
        return answers  # type: ignore[return-value]

    def _read_spans(
        self, reads: Sequence[Read], spans: list[tuple[int, Tensor, Tensor]]
    ) -> list[tuple[int, IDRPReadResult]]:
        """Bank reads in queue order, one per run of equal (top_k, min_score, namespace,
        rescore); rescored runs decode their candidates (model/rescore.py); then one decode of
        the other hits."""
        found: list[Found] = []
        with self._lock:
            run = 0
            while run < len(spans):
                key = read_key(reads[spans[run][0]])
                end = run + 1
                while end < len(spans) and read_key(reads[spans[end][0]]) == key:
                    end += 1
                found += self._read_run(spans[run:end], *key)
                run = end
            if not self.bank.meta.plain:  # no slot keeps a record: the hits carry none
                for f in found:
                    f.records = [self.bank.records_at(row) for row in f.slots.tolist()]
            wanted = [f for f in found if reads[f.i].reconstruct and f.recon is None]
            hit = (
                torch.cat([f.slots.reshape(-1) for f in wanted])
                if wanted
                else torch.empty(0, dtype=torch.int64)
            )
            codes = self.bank.hit_codes(hit[hit >= 0])
        decoded = (
            self.model.decode(codes).float()
            if codes.shape[0]
            else torch.zeros(0, self.d, device=codes.device)
        )
        self._scatter(wanted, hit, decoded)
        return [
            (
                f.i,
                IDRPReadResult(
                    f.slots,
                    f.scores,
                    f.counts,
                    f.recon if reads[f.i].reconstruct else None,
                    f.records,
                    f.code_scores,
                ),
            )
            for f in found
        ]

    def _read_run(
        self,
        run: list[tuple[int, Tensor, Tensor]],
        top_k: int,
        min_score: float | None,
        namespace: str | None,
        candidates: int,
    ) -> list[Found]:
        """One bank read (or a rescored one) for a run of requests, split back per request."""
        z = run[0][2] if len(run) == 1 else torch.cat([z for _, _, z in run])
        recon: Tensor | None = None
        code_scores: Tensor | None = None
        if candidates:
            x = run[0][1] if len(run) == 1 else torch.cat([x for _, x, _ in run])
            out = rescore(
                self.bank, self.model.decode, x, z, top_k, min_score, namespace, candidates
            )
            slots, scores, code_scores, recon = out
            counts = self.bank.touch(slots)
        else:
            r = self.bank.read(z, top_k, min_score, namespace)
            slots, scores, counts = r.slots, r.scores, r.counts
        sizes = [zi.shape[0] for _, _, zi in run]
        cols: list[Sequence[Tensor | None]] = [  # one split per column: views, per request
            [None] * len(run) if t is None else t.split(sizes)
            for t in (slots, scores, counts, code_scores, recon)
        ]
        return [Found(i, *parts) for (i, _, _), *parts in zip(run, *cols, strict=True)]

    def _scatter(self, wanted: list[Found], hit: Tensor, decoded: Tensor) -> None:
        """Scatter the decoded hits back into (n, k, d) per request (zeros where slot is -1)."""
        if decoded.shape[0] == hit.numel():  # every entry is a hit: nothing to scatter
            flat = decoded
        else:
            flat = torch.zeros(hit.numel(), self.d, dtype=torch.float32, device=decoded.device)
            flat[(hit >= 0).to(flat.device)] = decoded
        pos = 0
        for f in wanted:
            n = f.slots.numel()
            f.recon = flat[pos : pos + n].view(*f.slots.shape, self.d)
            pos += n

    # ------------------------------------------------------------------ a read over several banks

    def search(
        self,
        z: Tensor,
        top_k: int,
        min_score: float | None = None,
        namespace: str | None = None,
        x: Tensor | None = None,
        candidates: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stage one of a read that spans several banks (service/scale/): this bank's top_k
        for the codes z (B, m) of checked queries as `read_batch` finds them, but nothing
        counted. Rescored (candidates > 0, with the query items x (B, d)): ALL of this bank's
        R = max(candidates, top_k) code neighbours, each with its input-space score, by that
        score, min_score not applied: the caller keeps the global top R by code score, then
        ranks those as model/rescore.py does. Returns slots (B, k or R) (-1: none), scores,
        code scores, and the tick each hit was last written at (-1 where none), which
        `touch` checks."""
        with self._lock:
            if candidates:
                assert x is not None, "a rescored search needs the query items"
                r = max(candidates, top_k)
                out = rescore(self.bank, self.model.decode, x, z, r, None, namespace, r)
                slots, scores, code_scores = out.slots, out.scores, out.code_scores
            else:
                slots, scores = self.bank.search(z, top_k, min_score, namespace)
                code_scores = scores
            written = torch.where(slots >= 0, self.bank.last_write[slots.clamp_min(0)], -1)
        return slots, scores, code_scores, written

    def touch(
        self, slots: Tensor, written: Tensor, counted: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, list[list[bytes | None]] | None]:
        """Stage two: count the hits a merge over several banks kept from `search`. slots
        (R, k): this bank's kept hits of R queries, in their global order (-1 elsewhere; a row
        of -1 is a query that missed everywhere); written: each hit's last_write at stage one.
        A slot written or freed since is no longer that hit: it becomes -1 and counts nothing.
        counted (R,) bool: the rows whose query this bank counts in reads / hits / misses (a
        query is counted by one bank only); every kept hit counts its slot's access.

        Returns the kept slots (R, k), their counts after this read (0 where -1), their codes
        (H, m) in row-major order, and their records (R, k) (None while no slot keeps one)."""
        with self._lock:
            bank = self.bank
            safe = slots.clamp_min(0)
            same = (slots >= 0) & bank.occupied[safe] & (bank.last_write[safe] == written)
            kept = torch.where(same, slots, -1)
            reads, hits, misses = bank.reads, bank.hits, bank.misses
            counts = bank.touch(kept)
            # touch counted every row, and a row's hit by its first entry: recount as said
            n = int(counted.sum())
            n_hit = int(((kept >= 0).any(dim=1) & counted).sum())
            bank.reads, bank.hits, bank.misses = reads + n, hits + n_hit, misses + n - n_hit
            codes = bank.hit_codes(kept[kept >= 0])
            records = None if bank.meta.plain else [bank.records_at(r) for r in kept.tolist()]
        return kept, counts, codes, records

    # ------------------------------------------------------------------ slots and state

    def get(self, slot: int) -> SlotView:
        """One occupied slot's counters, code and reconstruction (not counted as an access)."""
        with self._lock:
            view = self.bank.get(slot)  # SlotNotFound when free or out of range
        recon = self.model.decode(view.code.unsqueeze(0))[0].float()
        return dataclasses.replace(view, reconstruction=recon)

    def delete(self, slot: int) -> int:
        """Free an occupied slot (logged first); returns the number of occupied slots left."""
        with self._lock:
            self._commit([Free(self.bank.check_occupied(slot))])
            return self.bank.used

    def clear(self) -> None:
        """Free every slot (logged first)."""
        with self._lock:
            self._commit([Clear()])

    def forget(self, namespace: str) -> list[int]:
        """Free every slot of a namespace at once (logged first); the slots it freed.
        NamespaceNotFound when it holds no slot."""
        checked_namespace(namespace)
        with self._lock:
            slots = self.bank.namespace_slots(namespace)
            if not slots:
                raise NamespaceNotFound(f"namespace {namespace!r} holds no slot")
            self._commit([Forget(slots)])
            return slots

    def pin(self, slot: int, pinned: bool = True) -> SlotView:
        """Pin (never evicted) or unpin an occupied slot (logged first)."""
        with self._lock:
            s = self.bank.check_occupied(slot)
            self._commit([Pin([s], bool(pinned))])
        return self.get(s)

    def preview(self, n: int, namespace: str = DEFAULT_NAMESPACE) -> Plan:
        """The slots a write of n rows into `namespace` would take now, and which of them it
        would evict: the LFU policy's next choice, nothing changed (BankFull if none)."""
        checked_namespace(namespace)
        with self._lock:
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.bank.capacity:
                raise InvalidInput(f"expected n in [1, {self.bank.capacity}], got {n!r}")
            return self.bank.plan_writes([n], [namespace])[0]

    def checkpoint(self) -> tuple[dict[str, Tensor], int]:
        """A copy of the bank's state and the log position it holds, taken together."""
        with self._lock:
            return self.bank.state_dict(), self.position

    def stats(self) -> dict[str, Any]:
        """The bank's counters and occupancy (MemoryBank.stats)."""
        with self._lock:
            return self.bank.stats()

    @property
    def tick(self) -> int:
        return self.bank.tick
