"""A shard's folder is claimed for (index, shards): a sharded bank restarted with another
--shards refuses to start instead of serving fewer memories than it acknowledged
(service/scale/layout.py). Real files; the last test deploys onto the session's real Ray
cluster over the folder its 2-shard app is serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from model.errors import RecoveryError
from service.scale.layout import LAYOUT_NAME, check, claim
from service.settings import Settings
from tests.ray_servers import SHARDS, C, Server


def test_a_claim_is_written_once_and_holds(tmp_path: Path) -> None:
    folder = tmp_path / "shard-1"
    claim(folder, 1, 3)
    assert json.loads((folder / LAYOUT_NAME).read_text()) == {"index": 1, "shards": 3}
    claim(folder, 1, 3)  # the same layout again: fine
    assert sorted(p.name for p in folder.iterdir()) == [LAYOUT_NAME]  # no temp file left


@pytest.mark.parametrize(
    ("index", "shards", "message"),
    [
        (
            1,
            2,
            "holds shard 1 of a 3-shard bank, but this is shard 1 of 2: start with --shards 3",
        ),
        (2, 3, "holds shard 1 of a 3-shard bank, but this is shard 2 of 3"),
    ],
)
def test_another_layout_is_refused_naming_both(
    tmp_path: Path, index: int, shards: int, message: str
) -> None:
    folder = tmp_path / "shard-1"
    claim(folder, 1, 3)
    with pytest.raises(RecoveryError, match=message):
        claim(folder, index, shards)
    assert json.loads((folder / LAYOUT_NAME).read_text()) == {"index": 1, "shards": 3}


def test_shard_0_refuses_data_of_shards_beyond_the_last(tmp_path: Path) -> None:
    # Folders written before SHARD.json existed: only their data tells how many shards ran.
    (tmp_path / "shard-2").mkdir()
    (tmp_path / "shard-2" / "wal-00000001.log").write_bytes(b"\0" * 8)
    (tmp_path / "shard-3").mkdir()  # empty: never held data, ignored
    with pytest.raises(RecoveryError) as e:
        claim(tmp_path / "shard-0", 0, 2)
    assert str(e.value) == (
        f"{tmp_path} holds the data of shard-2, beyond the 2 shard(s) this bank is started "
        "with: start with --shards 3 at least (their memories would not be served), or point "
        "MT_SNAPSHOT_DIR at another folder"
    )
    assert not (tmp_path / "shard-0").exists()  # nothing claimed
    claim(tmp_path / "shard-0", 0, 3)  # three shards: shard-2 is one of them


@pytest.mark.parametrize(
    "body", [b"{", b'{"index": 3, "shards": 2}', b'{"index": "0", "shards": 2}', b"[]"]
)
def test_a_damaged_claim_is_refused(tmp_path: Path, body: bytes) -> None:
    folder = tmp_path / "shard-0"
    folder.mkdir()
    (folder / LAYOUT_NAME).write_bytes(body)
    with pytest.raises(RecoveryError, match=r"is damaged .*: refusing to guess the bank's layout"):
        claim(folder, 0, 2)
    assert (folder / LAYOUT_NAME).read_bytes() == body  # never overwritten


def test_check_reads_every_shard_folder_and_writes_nothing(tmp_path: Path) -> None:
    for i in range(2):
        claim(tmp_path / f"shard-{i}", i, 2)
    check(tmp_path, 2)
    check(tmp_path / "new", 4)  # no folder yet: nothing to refuse, nothing written
    assert not (tmp_path / "new").exists()
    wrong = r"shard-0 holds shard 0 of a 2-shard bank, but this is shard 0 of 3"
    with pytest.raises(RecoveryError, match=wrong):
        check(tmp_path, 3)
    with pytest.raises(RecoveryError, match="holds the data of shard-1, beyond the 1 shard"):
        check(tmp_path, 1)


def test_the_ray_app_refuses_fewer_shards_over_a_served_folder(
    ray_server: Server, weights_file: Path
) -> None:
    from ray import serve

    from service.scale.app import build

    with ray_server.client() as c:
        before = c.get("/stats").json()["used"]
    # What `python -m service.ray --shards 1` checks before it deploys: the exact reason.
    with pytest.raises(RecoveryError) as e:
        check(ray_server.snapshot_dir, SHARDS - 1)
    assert str(e.value) == (
        f"{ray_server.snapshot_dir} holds the data of shard-1, beyond the 1 shard(s) this "
        "bank is started with: start with --shards 2 at least (their memories would not be "
        "served), or point MT_SNAPSHOT_DIR at another folder"
    )
    # Deployed anyway (another driver, another machine): its shard 0 refuses the folder.
    settings = Settings(
        weights=weights_file,
        snapshot_dir=ray_server.snapshot_dir,
        capacity=C,
        torch_threads=1,
        rescore=0,
    )
    name = "layout-check"
    try:
        with pytest.raises(RuntimeError, match=r"Failed to update the deployments \['Shard0'\]"):
            serve.run(build(settings, SHARDS - 1), name=name, route_prefix=f"/{name}")
    finally:
        serve.delete(name)
    with ray_server.client() as c:  # the running app is untouched
        assert c.get("/stats").json()["used"] == before
        assert httpx.get(f"{ray_server.base}/readyz").status_code == 200
