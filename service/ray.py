"""Serve MemoryTransit on Ray Serve: `python -m service.ray --shards N`.

The same HTTP contract as `python -m service` (the same app, routes and MT_* settings; it
listens on MT_HOST:MT_PORT through Serve's HTTP proxy), over N bank shards of MT_CAPACITY slots
each (global slot = shard * MT_CAPACITY + local), each with its own snapshot folder
MT_SNAPSHOT_DIR/shard-<i> and write-ahead log, and a batched codec deployment. The design and
its rules: service/scale/ (app.py, engine.py, merge.py) and README "Scale out on Ray Serve".

Without --address it starts a local Ray cluster (--num-cpus, temp files under --temp-dir);
with --address (or RAY_ADDRESS) it joins one, e.g. the compose file's head node.
Needs requirements-scale.txt (ray[serve]); `python -m service` does not.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

import ray
from ray import serve

from model.errors import RecoveryError
from service.scale import layout
from service.scale.app import APP_NAME, build
from service.settings import REPO_ROOT, Settings, get_settings

log = logging.getLogger("service.ray")
# Serve logs a line per request and per actor call in every replica and the proxy (files, and
# streamed to the driver): a third of a read's CPU here. Warnings and errors still show.
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service.ray", description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=int, default=2, help="bank shards (default 2)")
    p.add_argument("--codec-replicas", type=int, default=1, help="codec replicas (default 1)")
    p.add_argument(
        "--shard-timeout",
        type=float,
        default=5.0,
        help="seconds a shard may take to answer before it is marked down (default 5)",
    )
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    p.add_argument("--temp-dir", default="/tmp/ray-mt", help="Ray's temp folder (local)")
    return p.parse_args(argv)


def start(settings: Settings, args: argparse.Namespace) -> None:
    """Refuse a snapshot folder written with another --shards (service/scale/layout.py), then
    connect to (or start) Ray, start Serve's proxy on MT_HOST:MT_PORT, deploy the app."""
    layout.check(Path(settings.snapshot_dir), args.shards)
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    init: dict[str, object] = {
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
        "include_dashboard": False,
        "log_to_driver": True,
    }
    if args.address:
        init["address"] = args.address
    else:
        init["num_cpus"] = args.num_cpus
        init["_temp_dir"] = str(Path(args.temp_dir).resolve())
    ray.init(**init)  # type: ignore[arg-type]
    serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=QUIET)
    gpu = 0.0
    if settings.resolved_device().startswith("cuda"):
        gpu = 1.0 / (args.shards + args.codec_replicas)  # everything shares the GPUs
    app = build(
        settings,
        args.shards,
        codec_replicas=args.codec_replicas,
        shard_timeout_s=args.shard_timeout,
        gpu=gpu,
    )
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False, logging_config=QUIET)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper() if settings.log_level != "trace" else 5)
    try:
        start(settings, args)
    except RecoveryError as e:
        log.error("exiting: the bank could not start: %s", e)
        raise SystemExit(1) from None
    log.info(
        "serving %d shards on http://%s:%d (Ctrl-C stops)",
        args.shards,
        settings.host,
        settings.port,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()  # each shard's engine stops: queues drained, snapshot, WAL closed
    ray.shutdown()


if __name__ == "__main__":
    main()
