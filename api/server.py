"""uvicorn serving the API inside the sidecar's event loop, on a socket we bind ourselves (so a
bad address is a start-up error naming `api_listen`, and signals stay the sidecar's)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


class ApiServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the sidecar owns SIGTERM/SIGINT/SIGHUP


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def make_server(app: FastAPI) -> ApiServer:
    # log_config=None: uvicorn's records go to tlstrace's handler, in its log_format
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            loop="none", server_header=False, log_config=None)
    return ApiServer(config)
