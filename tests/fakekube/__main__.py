"""`python -m tests.fakekube --port P --token-file F [--cert C --key K]` for manual runs.

The token file is kube-apiserver's static token CSV, `token,user,uid,"group1,group2"`, with an
optional fifth column `impersonate` granting the caller impersonation.
"""

from __future__ import annotations

import argparse
import csv
import signal
import threading
from pathlib import Path

from ..support.pki import Leaf
from .model import Caller
from .server import FakeKube


def read_tokens(path: Path) -> dict[str, Caller]:
    tokens: dict[str, Caller] = {}
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].startswith("#"):
                continue
            token, user = row[0].strip(), row[1].strip()
            groups = tuple(g.strip() for g in (row[3] if len(row) > 3 else "").split(",")
                           if g.strip())
            may = len(row) > 4 and row[4].strip().lower() in ("impersonate", "true", "yes")
            tokens[token] = Caller(user, groups, may)
    return tokens


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fakekube", description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--name", default="fake")
    args = p.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    tls = Leaf(args.cert, args.key) if args.cert else None
    kube = FakeKube(name=args.name, tokens=read_tokens(args.token_file), tls=tls,
                    port=args.port).start()
    print(kube.url, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    kube.stop()


if __name__ == "__main__":
    main()
