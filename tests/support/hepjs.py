"""hep-js (npm, sipcapture's Node library) as an independent HEP decoder.

`hepjs_decode(packets)` runs `node` once over a list of encoded packets and returns, per
packet, what `hep.decapsulate()` made of it (a dict with "rcinfo" and "payload"), or None when
it refused it. hep-js ignores the vendor id, reads every string as UTF-8, and does not decode
the IPv6 address chunks (0x0005/0x0006), the keep-alive (0x000d) nor the VLAN (0x0012).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

NODE_MODULES = Path(sys.prefix) / "npm" / "node_modules"

SCRIPT = r"""
const hep = require("hep-js");
let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", () => {
  for (const line of input.split("\n")) {
    if (!line.trim()) continue;
    const d = hep.decapsulate(Buffer.from(line.trim(), "hex"));
    process.stdout.write(JSON.stringify(d === false || d === undefined ? null : d) + "\n");
  }
});
"""


def available() -> bool:
    return shutil.which("node") is not None and (NODE_MODULES / "hep-js").is_dir()


def hepjs_decode(packets: list[bytes], timeout: float = 30.0) -> list[dict[str, Any] | None]:
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    proc = subprocess.run(
        ["node", "-e", SCRIPT],
        input="\n".join(p.hex() for p in packets) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"node failed ({proc.returncode}): {proc.stderr}")
    # split on "\n" only: JSON.stringify leaves U+2028/U+2029 unescaped, splitlines() cuts there
    out = [json.loads(line) for line in proc.stdout.split("\n") if line]
    if len(out) != len(packets):
        raise RuntimeError(f"hep-js answered {len(out)} lines for {len(packets)} packets")
    return out
