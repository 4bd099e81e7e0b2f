"""The values a bank accepts and answers (issue 10, B2): a write whose code is outside the
codec's range is refused by every bank dtype with the same message, every stored code decodes
to finite numbers (no null in a reconstruction), and scores stay within [-1, 1]."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from model.bank import MemoryBank
from model.checkpoint import load_idrp
from model.errors import InvalidInput
from model.memory import CODE_RANGE, IDRPMemory
from model.state import INT8_MAX
from model.testing import tiny_idrp
from service.settings import Settings
from tests.conftest import D, M, running

WEIGHTS = sorted((Path(__file__).parent.parent / "weights").glob("*.safetensors"))


def counters(client: TestClient) -> dict[str, object]:
    stats = client.get("/stats").json()
    return {k: stats[k] for k in ("used", "writes", "evictions", "reads")}


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_a_code_outside_the_codec_range_is_refused_alike_by_every_dtype(
    make_settings: Callable[..., Settings], dtype: str
) -> None:
    # The probe's row: a constant 1e12 was accepted and read back as [null, null, ...].
    with running(make_settings(bank_dtype=dtype)) as client:
        before = counters(client)
        r = client.post("/write", json={"items": [[0.5] * D, [1e12] * D], "mode": "each"})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert detail.startswith("item 1 cannot be stored: its code value ")
        assert detail.endswith(
            f"is outside the codec's range (|z| <= {127 * CODE_RANGE:.4g}, {CODE_RANGE}x the "
            "largest code of its training items): the item is far from what the codec was "
            "trained on"
        )  # the tiny codec's code_scales are 1: the limit is 127 * CODE_RANGE in every dim
        assert counters(client) == before  # the whole request refused, the bank unchanged


def test_the_limit_is_per_dimension_and_names_the_value() -> None:
    model = tiny_idrp(d=D, m=M)
    model.code_scales.copy_(torch.linspace(0.001, 0.006, M))
    memory = IDRPMemory(model, MemoryBank(8, M))
    x = torch.rand(3, D, generator=torch.Generator().manual_seed(0))
    z = model.encode(x)
    limit = model.code_scales * INT8_MAX * CODE_RANGE
    over = z.abs() > limit
    assert bool(over.any())  # these scales are tight enough for some code to exceed them
    i, j = (int(v) for v in over.nonzero()[0])
    with pytest.raises(InvalidInput) as err:
        memory.write(x, mode="each")
    assert str(err.value).startswith(
        f"item {i} cannot be stored: its code value {float(z[i, j]):.4g} in dimension {j} is "
        f"outside the codec's range (|z| <= {float(limit[j]):.4g}, "
    )
    assert memory.bank.used == 0
    # Within the range every dtype stores: a codec whose range covers them takes them all.
    model.code_scales.fill_(1.0)
    assert IDRPMemory(model, MemoryBank(8, M)).write(x, mode="each").slots == [0, 1, 2]


@pytest.mark.parametrize("path", WEIGHTS, ids=[p.stem for p in WEIGHTS])
def test_every_shipped_codec_decodes_its_whole_code_range_finitely(path: Path) -> None:
    # What makes "a stored code always has a finite reconstruction" true: corners and random
    # points of 1000x the write limit's box decode to finite numbers.
    model = load_idrp(path)
    limit = model.code_scales * INT8_MAX * CODE_RANGE
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (64, limit.numel()), generator=g) * 2 - 1
    inside = torch.rand(64, limit.numel(), generator=g) * 2 - 1
    for scale in (1.0, 1000.0):
        z = torch.cat([signs * limit, inside * limit]) * scale
        with torch.no_grad():
            assert bool(torch.isfinite(model.decode(z)).all()), scale


def test_reads_answer_no_null_and_scores_within_one(client: TestClient) -> None:
    rows = torch.rand(8, D, generator=torch.Generator().manual_seed(3)).tolist()
    assert client.post("/write", json={"items": rows, "mode": "each"}).status_code == 200
    r = client.post("/read", json={"queries": rows, "top_k": 8})
    assert r.status_code == 200
    for hits in r.json()["results"]:
        for hit in hits:
            assert -1.0 <= hit["score"] <= 1.0
            assert None not in hit["reconstruction"]


def test_a_cosine_that_rounds_past_one_is_clipped() -> None:
    # float32 dot products of unit rows round past 1 for some rows (1.0000001192092896).
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(4096, M, generator=g)
    unit = rows / rows.norm(dim=1, keepdim=True)
    over = ((unit * unit).sum(dim=1) > 1.0).nonzero()
    assert over.numel(), "no row whose self-cosine rounds past 1 in float32"
    q = rows[int(over[0])].unsqueeze(0)
    bank = MemoryBank(4, M)
    bank.assign([0], q)
    assert float(bank.read(q).scores[0, 0]) == 1.0
    assert float(bank.read(-q).scores[0, 0]) <= 1.0  # and never below -1
    assert float(bank.read(-q).scores[0, 0]) == -1.0
