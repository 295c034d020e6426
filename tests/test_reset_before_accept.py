"""A client that resets its connection before the relay gets to it costs nothing: no
exception in a callback, no connection slot taken for good."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import uvloop

from tests.support.net import free_port
from tlstrace.app import Sidecar
from tlstrace.config import Config


def test_reset_in_the_backlog(tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> tuple[int, int]:
        config = Config.model_validate(
            {
                "api_listen": "",
                "state_dir": str(tmp_path),
                "backend_probe_interval": 0,
                "listener": [
                    {"listen": f"tls:127.0.0.1:{port}", "backend": f"tcp:127.0.0.1:{free_port()}"}
                ],
            }
        )
        sidecar = Sidecar(config)
        await sidecar.start()
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        socks = []
        for _ in range(5):  # connect while the loop is busy here, then reset (linger 0)
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socks.append(s)
        for s in socks:
            s.close()
        await asyncio.sleep(0.5)
        open_slots = sidecar.relay.inbound_open
        await sidecar.shutdown()
        return open_slots, len(errors)

    open_slots, errors = uvloop.run(scenario())
    assert open_slots == 0
    assert errors == 0
