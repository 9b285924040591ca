"""Optional build step: compile the data plane's hot modules with mypyc (the code is already
`mypy --strict`), next to their sources. Python imports a compiled module before its `.py`;
`--clean` removes them, and without them everything runs as pure Python (CI, the tests).

    python scripts/compile_data_plane.py [--clean] [--root DIR]

Measured in benchmarks/RESULTS.md (throughput section). Not compiled: proxy/outcome.py
(mypyc 1.x crashes importing its NamedTuple with properties) and everything off the request
path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "breaker",
    "destination",
    "flow",
    "handler",
    "hashing",
    "headers",
    "measure",
    "metrics",
    "paths",
    "pool",
    "protocol",
    "request",
    "respond",
    "retry_budget",
    "routing",
    "split",
    "streaming",
    "traffic",
    "upstream",
    "upstream_response",
)


def compiled(root: Path) -> list[Path]:
    """The compiled extension modules present under `root` (the proxy's and mypyc's own)."""
    return sorted([*root.glob("proxy/*.so"), *root.glob("*__mypyc*.so")])


def clean(root: Path) -> None:
    for path in compiled(root):
        path.unlink()
    shutil.rmtree(root / "build", ignore_errors=True)


def build(root: Path) -> None:
    """Compile MODULES in place under `root` (a checkout of this repository)."""
    clean(root)
    mypyc = Path(sys.executable).with_name("mypyc")
    sources = [f"abgate/proxy/{name}.py" for name in MODULES]  # named abgate.proxy.*
    subprocess.run([str(mypyc), *sources], cwd=root, check=True, capture_output=True)
    shutil.rmtree(root / "build", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    if args.clean:
        clean(args.root)
    else:
        build(args.root)
        print("\n".join(str(path) for path in compiled(args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
