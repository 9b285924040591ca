"""The proxies a user would pick instead of abgate, set up for the throughput benchmark on the
same upstream and the same sticky key: HAProxy (`balance hdr(X-User-Id)`, one thread, server
keep-alive) and Caddy (`reverse_proxy` with `lb_policy header X-User-Id`, GOMAXPROCS=1); and
abgate's optional mypyc build in a copy of this tree. nginx's own config is in run.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT

PACKAGES = {"haproxy": "haproxy", "caddy": "caddy"}  # tool -> Debian package


def install_peers() -> None:
    """Install HAProxy and Caddy from Debian's packages when missing and this is root on a
    Debian-like system (as scripts/install-test-servers.sh does for the tests' servers);
    otherwise the benchmark leaves them out of the table."""
    missing = [
        package
        for tool, package in PACKAGES.items()
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    print(f"benchmarks: installing {', '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if subprocess.run(command, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(command, env=env, capture_output=True, check=False)
    for service in missing:  # the packages start system services; the benchmark its own
        subprocess.run(["service", service, "stop"], capture_output=True, check=False)


def haproxy_conf(workdir: Path, port: int, arms: tuple[int, int]) -> list[str]:
    """The command line of an HAProxy with one thread splitting on X-User-Id."""
    servers = "\n".join(
        f"    server arm{index} 127.0.0.1:{arm} maxconn 512" for index, arm in enumerate(arms)
    )
    path = workdir / "haproxy.cfg"
    path.write_text(
        f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend split
    bind 127.0.0.1:{port}
    default_backend arms
backend arms
    balance hdr(X-User-Id)
    hash-type consistent
{servers}
"""
    )
    return [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(path)]


def caddy_conf(workdir: Path, port: int, arms: tuple[int, int]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a Caddy on one core splitting on X-User-Id."""
    path = workdir / "Caddyfile"
    upstreams = " ".join(f"127.0.0.1:{arm}" for arm in arms)
    path.write_text(
        f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    log {{
        output discard
    }}
    reverse_proxy {upstreams} {{
        lb_policy header X-User-Id
    }}
}}
"""
    )
    env = {**os.environ, "GOMAXPROCS": "1", "HOME": str(workdir), "XDG_DATA_HOME": str(workdir)}
    command = [shutil.which("caddy") or "/usr/bin/caddy", "run", "--adapter", "caddyfile"]
    return [*command, "--config", str(path)], env


def compiled_tree(workdir: Path) -> Path | None:
    """A copy of this tree with the data plane compiled by mypyc (scripts/compile_data_plane.py),
    or None when it cannot be built here (no mypyc or no C compiler)."""
    from scripts.compile_data_plane import build

    copy = workdir / "compiled"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.so", "build", "__pycache__", ".*_cache", "tests", "docs"
        ),
    )
    try:
        build(copy)
    except (OSError, ValueError) as exc:
        print(f"benchmarks: no mypyc build ({exc})", file=sys.stderr)
        return None
    except subprocess.CalledProcessError as exc:
        print(f"benchmarks: the mypyc build failed ({exc})", file=sys.stderr)
        return None
    return copy


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + kernel) used so far by a process and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        own = stats.get(current)
        if own is not None:
            total += (int(own[11]) + int(own[12])) / tick
        todo.extend(children.get(current) or [])
    return total
