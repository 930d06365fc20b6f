"""What a boto3 client costs per record: a new client for each write against the shared one, side by side.

    python -m bench.s3_client [--writes 40] [--rounds 2]

Starts the tests' SeaweedFS (tests/s3.py), writes small JSON records through `results.store` (the shared
client, `results.store.s3_client`) and through a client made for each write (what every `open_store(uri)`
did before), and prints wall and CPU milliseconds per write and their ratio, per round.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _per_write(n: int, write) -> tuple[float, float]:
    t, c = time.perf_counter(), _cpu()
    for i in range(n):
        write(i)
    return (time.perf_counter() - t) / n, (_cpu() - c) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    from results import store as results_store
    from results.store import open_store
    from tests.s3 import WeedServer
    work = Path(tempfile.mkdtemp(prefix="fair-s3-client-"))
    server = WeedServer(work)
    server.start()
    os.environ.update(server.env())
    try:
        store = open_store(f"s3://{server.bucket}/bench")
        store.put("warm.json", b"{}")
        body = b'{"trial": "t", "val_top1": 50.0}'

        def fresh(i: int) -> None:          # the same write with no client kept: one made for it
            results_store._CLIENTS.clear()
            open_store(f"s3://{server.bucket}/bench").put(f"fresh/{i}.json", body)

        for r in range(a.rounds):
            f = _per_write(a.writes, fresh)
            s = _per_write(a.writes, lambda i: open_store(f"s3://{server.bucket}/bench").put(f"shared/{i}.json", body))
            print(f"round {r + 1}: a client per write {1e3 * f[0]:.0f} ms wall / {1e3 * f[1]:.0f} ms CPU; "
                  f"shared client {1e3 * s[0]:.0f} ms / {1e3 * s[1]:.0f} ms; ratio {f[0] / s[0]:.1f}x wall, "
                  f"{f[1] / max(s[1], 1e-9):.1f}x CPU")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
