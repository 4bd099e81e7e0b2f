"""service/scale/merge.py without Ray: the write router's rule, and a read merged over banks
(IDRPMemory.search on each, merge, IDRPMemory.touch, assemble) equals the same read of one
bank holding the same codes (slots, scores, counts, reconstructions, counters)."""

from __future__ import annotations

import zlib

import torch

from model.bank import MemoryBank
from model.memory import IDRPMemory, Read
from model.testing import tiny_idrp
from service.scale.merge import Route, assemble, for_shard, merge, route

D, M = 64, 16


def test_route_namespace_hash_then_free_then_victim() -> None:
    routes = [Route(3), Route(5), Route(5)]
    ns = "alice"
    assert route(ns, routes, [0, 0, 0]) == zlib.crc32(b"alice") % 3
    assert route("default", routes, [0, 0, 0]) == 1  # most free, the lower of a tie
    assert route("default", routes, [0, 3, 0]) == 2  # writes in flight count
    full = [Route(0, 7), Route(0, 2), Route(0, None)]
    assert route("default", full, [0, 0, 0]) == 1  # the lowest LFU victim


def _memories(n: int, cap: int) -> tuple[list[IDRPMemory], IDRPMemory]:
    model = tiny_idrp(d=D, m=M)
    shards = [IDRPMemory(model, MemoryBank(cap, M)) for _ in range(n)]
    one = IDRPMemory(model, MemoryBank(n * cap, M))
    return shards, one


def test_a_read_over_shards_is_the_read_of_one_bank() -> None:
    cap, n = 8, 3
    shards, one = _memories(n, cap)
    x = torch.rand(12, D, generator=torch.Generator().manual_seed(1))
    slot_of = {}
    for i in range(12):  # item i on shard i % n; the single bank stores them in order
        s = i % n
        local = shards[s].write(x[i : i + 1], "each").slots[0]
        slot_of[s * cap + local] = one.write(x[i : i + 1], "each").slots[0]
    q = torch.cat([x[[4, 4, 7]], torch.rand(1, D, generator=torch.Generator().manual_seed(3))])
    for top_k, min_score, rescore in ((3, None, 0), (5, 0.5, 0), (2, None, 4)):
        z = shards[0].model.encode(q).float()
        found = [m.search(z, top_k, min_score, None, q, rescore) for m in shards]
        merged = merge(found, top_k, rescore, min_score)
        done = []
        for s, m in enumerate(shards):
            t = for_shard(merged, s)
            if t is not None:
                done.append((s, t, m.touch(t.slots, t.written, t.counted)))
        out = assemble(merged, done, cap, M)
        [ref] = one.read_batch([Read(q, top_k, min_score, True, None, rescore)])
        got = [[slot_of[s] for s in row if s >= 0] for row in out.slots.tolist()]
        want = [[s for s in row if s >= 0] for row in ref.slots.tolist()]
        assert got == want
        ok = out.slots >= 0
        assert torch.equal(out.counts[ok], ref.counts[ref.slots >= 0])
        assert torch.allclose(out.scores[ok], ref.scores[ref.slots >= 0], atol=1e-6)
        recon = shards[0].model.decode(out.codes).float()
        assert torch.allclose(recon, ref.reconstructions[ref.slots >= 0], atol=1e-5)
    total = {k: sum(getattr(m.bank, k) for m in shards) for k in ("reads", "hits", "misses")}
    assert total == {k: getattr(one.bank, k) for k in ("reads", "hits", "misses")}


def test_a_slot_rewritten_between_the_stages_is_dropped() -> None:
    shards, _ = _memories(1, 2)
    [m] = shards
    x = torch.rand(3, D, generator=torch.Generator().manual_seed(2))
    m.write(x[:2], "each")
    z = m.model.encode(x[:1]).float()
    merged = merge([m.search(z, 1)], 1)
    m.delete(0)
    m.write(x[2:], "each")  # slot 0 again, another code
    t = for_shard(merged, 0)
    assert t is not None
    kept, _, codes, _ = m.touch(t.slots, t.written, t.counted)
    assert kept.tolist() == [[-1]] and codes.shape[0] == 0
    assert (m.bank.reads, m.bank.hits, m.bank.misses) == (1, 0, 1)
