"""`listsync web`: uvicorn serving the app on two listeners.

The public listener (LISTSYNC_WEB_HOST:PORT) takes the signup intake, the Mailchimp webhook
and the health probes. The internal one (LISTSYNC_METRICS_HOST:PORT, 127.0.0.1 by default)
serves `/metrics` and the probes, and nothing else: queue depths, reject counts and job
states are for the operators' Prometheus, not for whoever can reach the website's side.
Both are sockets of the same uvicorn server, so every worker process answers on both.

    python -m worker.web.serve --host H --port P --workers N   (what `listsync web` runs)
"""

from __future__ import annotations

import argparse
import copy
import socket
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from config import get_settings

APP = "worker.web.app:serve_app"


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, as uvicorn binds its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup, with listsync's own loggers (`worker`, `tasks`) writing to
    its stderr handler at LISTSYNC_LOG_LEVEL: without them, intake and webhook refusals
    logged at INFO would go nowhere."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("worker", "tasks"):
        config["loggers"][name] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


def serve(host: str, port: int, workers: int) -> None:
    settings = get_settings()
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=log_config(settings.log_level),
        log_level=settings.log_level.lower(),
    )
    sockets = [config.bind_socket(), listen(settings.metrics_host, settings.metrics_port)]
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        uvicorn.Server(config).run(sockets=sockets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    serve(args.host, args.port, args.workers)


if __name__ == "__main__":
    main()
