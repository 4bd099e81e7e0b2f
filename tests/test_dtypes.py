"""Each bank storage dtype through the whole engine: write, read, snapshot, restart, WAL replay."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model.checkpoint import save_idrp
from model.testing import tiny_idrp
from service.engine import Engine
from service.settings import Settings

pytestmark = pytest.mark.anyio
Items = Callable[..., list[list[float]]]


@pytest.fixture(scope="module")
def calibrated_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model with int8 scales calibrated on items like the test's (as train does)."""
    model = tiny_idrp(d=64, m=16)
    model.calibrate_code_scales(torch.rand(512, 64, generator=torch.Generator().manual_seed(0)))
    path = tmp_path_factory.mktemp("weights") / "tiny-calibrated.safetensors"
    save_idrp(model, path)
    return path


async def started(settings: Settings) -> Engine:
    engine = Engine(settings)
    await engine.start()
    return engine


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
async def test_dtype_round_trips_through_write_read_snapshot_and_wal(
    dtype: str, make_settings: Callable[..., Settings], items: Items, calibrated_weights: Path
) -> None:
    settings = make_settings(
        weights=calibrated_weights, bank_dtype=dtype, snapshot_on_shutdown=False
    )
    x = items(4, seed=3)
    engine = await started(settings)
    try:
        written = await engine.write(x[:3], mode="each")
        assert written.slots == [0, 1, 2]
        hits = await engine.read(x[:3])
        assert [(q[0].slot, q[0].count) for q in hits] == [(0, 1), (1, 1), (2, 1)]
        assert all(q[0].score > 0.99 for q in hits)
        snap = await engine.snapshot()
        await engine.write(x[3:], mode="each")  # only in the WAL
        codes = [(await engine.get_slot(i)).code for i in range(4)]
        stats = await engine.stats()
        assert stats["bank_dtype"] == dtype
    finally:
        await engine.stop()  # no shutdown snapshot: slot 3 must come back from the WAL

    engine = await started(settings)
    try:
        stats = await engine.stats()
        assert stats["bank_dtype"] == dtype and stats["used"] == 4
        assert stats["recovery"]["snapshot"] == str(snap.path)
        assert stats["recovery"]["replayed"] == 1
        for i in range(4):
            got = (await engine.get_slot(i)).code
            assert torch.equal(torch.as_tensor(got), torch.as_tensor(codes[i]))  # bit-identical
        [[hit]] = await engine.read(x[1:2])
        assert (hit.slot, hit.count) == (1, 2)  # the count from the snapshot continues
    finally:
        await engine.stop()
