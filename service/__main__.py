"""`python -m service`: one uvicorn worker serving `create_app(settings)` on MT_HOST:MT_PORT.

One process owns one bank, so there is exactly one worker. SIGTERM / SIGINT shut down
gracefully: uvicorn stops accepting connections and lets running requests finish (up to
GRACEFUL_S), then the lifespan stops the engine, which drains queued reads and writes the
shutdown snapshot (MT_SNAPSHOT_ON_SHUTDOWN). Exit status: 0 after a clean stop, 1 when the
engine could not start (bad weights, unrecoverable snapshots), 2 for invalid settings.
"""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import ValidationError

from service.settings import Settings

GRACEFUL_S = 20  # below compose's stop_grace_period (30 s), so the snapshot has time left


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:
        problems = "; ".join(
            f"MT_{'.'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: "
            + err["msg"].removeprefix("Value error, ")
            for err in e.errors()
        )
        print(f"invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn  # after the settings check: a bad setting fails fast, without importing torch

    from service.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=GRACEFUL_S,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    failures: list[BaseException] = []

    def on_fatal(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True  # uvicorn shuts down as on SIGTERM

    app.state.on_fatal = on_fatal
    # uvicorn handles SIGTERM / SIGINT itself while serving, then re-raises the signal once it
    # has shut down gracefully; by then the snapshot is written, so end with status 0 instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if failures:
        logging.getLogger("service").error("exiting: the engine could not start: %s", failures[0])
        return 1
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
