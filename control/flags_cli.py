"""`abgate flags list|get|set|history|export|import|backup`: the control API from a shell.

Talks to --url (ABGATE_CONTROL_URL, default http://127.0.0.1:8092) with the bearer token from
--token or ABGATE_CONTROL_TOKEN. export writes every flag as JSON; import sets them all back in
one atomic call (each gets a new version, so the audit trail shows the restore). backup
writes the routing state with a timestamp: backups/YYYYMMDD/traffic/flags-HHMMSS.json (the
export) and config-HHMMSS.json (the running routes, upstreams and experiments); restore with
`abgate flags import backups/YYYYMMDD/traffic/flags-HHMMSS.json`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import socket
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abgate.config.errors import AbgateError
from abgate.config.fields import shown

DEFAULT_URL = "http://127.0.0.1:8092"


class ApiCallFailed(AbgateError):
    pass


def add_flags_parser(commands: Any) -> None:
    flags = commands.add_parser(
        "flags",
        help="read and change flags through the control API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_argument("--url", default=os.environ.get("ABGATE_CONTROL_URL", DEFAULT_URL))
    flags.add_argument("--token", default=os.environ.get("ABGATE_CONTROL_TOKEN"))
    actions = flags.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every flag", parents=[CONNECTION])
    get = actions.add_parser("get", help="one flag", parents=[CONNECTION])
    get.add_argument("name")
    set_ = actions.add_parser("set", help="set a flag's treatment percentage", parents=[CONNECTION])
    set_.add_argument("name")
    set_.add_argument("percentage")
    set_.add_argument("--reason", default="")
    history = actions.add_parser(
        "history", help="a flag's audit trail, newest first", parents=[CONNECTION]
    )
    history.add_argument("name")
    history.add_argument("--limit", type=int, default=20)
    export = actions.add_parser("export", help="all flags as JSON (a backup)", parents=[CONNECTION])
    export.add_argument("file", nargs="?", help="write here instead of stdout")
    import_ = actions.add_parser(
        "import", help="set all flags from an export, atomically", parents=[CONNECTION]
    )
    import_.add_argument("file")
    import_.add_argument("--reason", default=None)
    backup = actions.add_parser(
        "backup",
        help="flags and routing config to DIR/YYYYMMDD/traffic/, timestamped",
        description="Write the flags (as `export`) and the running routing configuration to "
        "DIR/YYYYMMDD/traffic/flags-HHMMSS.json and config-HHMMSS.json (local time). Restore "
        "the flags with `abgate flags import FILE`.",
        parents=[CONNECTION],
    )
    backup.add_argument("--dir", default="backups", help="(default backups)")


def connection_options() -> argparse.ArgumentParser:
    """--url and --token on each action too, so that they may follow it (`abgate rollout
    status X --url U`): given there they win; not given, the command's (with its defaults)
    stand, as SUPPRESS leaves them unset."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", default=argparse.SUPPRESS, help="the control API's URL")
    options.add_argument("--token", default=argparse.SUPPRESS, help="its bearer token")
    return options


CONNECTION = connection_options()


def actor() -> str:
    """Who the CLI acts for: the login name (LOGNAME, USER, LNAME, USERNAME, then the password
    database, as getpass reads it), else this host's name."""
    try:
        return f"cli@{getpass.getuser()}"
    except (OSError, KeyError):  # no name in the environment, and a uid with no entry
        return f"cli@{socket.gethostname() or 'unknown'}"


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{args.url.rstrip('/')}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("X-ABGate-Actor", actor())
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise ApiCallFailed(f"{method} {path}: {exc.code} {message}") from None
    except urllib.error.URLError as exc:
        raise ApiCallFailed(f"cannot reach the control API at {args.url}: {exc.reason}") from None


def _percentage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise ApiCallFailed(f"percentage must be a number from 0 to 100, got {shown(text)}")
    return value


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _read_export(file: str) -> dict[str, Any]:
    try:
        exported = json.loads(Path(file).read_text())
        flags = {flag["name"]: flag["percentage"] for flag in exported["flags"]}
    except OSError as exc:
        raise ApiCallFailed(f"cannot read {file}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiCallFailed(
            f"{file} is not an `abgate flags export` file: {type(exc).__name__}: {exc}"
        ) from None
    return flags


def _backup(args: argparse.Namespace) -> list[Path]:
    now = datetime.now()  # local time: what `date +%Y%m%d` names the folder
    folder = Path(args.dir) / now.strftime("%Y%m%d") / "traffic"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%H%M%S")
    written = [folder / f"flags-{stamp}.json"]
    written[0].write_text(json.dumps(call(args, "GET", "/api/flags"), indent=2) + "\n")
    try:
        config = call(args, "GET", "/api/config")["config"]
    except ApiCallFailed:  # abgate control has no data plane: the flags are the routing state
        return written
    routing = {key: config[key] for key in ("routes", "upstreams", "experiments", "control")}
    written.append(folder / f"config-{stamp}.json")
    written[1].write_text(json.dumps(routing, indent=2) + "\n")
    return written


def _run(args: argparse.Namespace) -> None:
    if args.action == "list":
        for flag in call(args, "GET", "/api/flags")["flags"]:
            print(
                f"{flag['name']}\t{flag['percentage']:g}%\tv{flag['version']}\t"
                f"{flag['updated_by']}\t{flag['reason']}"
            )
    elif args.action == "get":
        print(json.dumps(call(args, "GET", f"/api/flags/{args.name}"), indent=2))
    elif args.action == "set":
        flag = call(
            args,
            "POST",
            f"/api/flags/{args.name}",
            {"percentage": _percentage(args.percentage), "reason": args.reason},
        )
        print(f"{flag['name']}: {flag['percentage']:g}% (version {flag['version']})")
    elif args.action == "history":
        data = call(args, "GET", f"/api/flags/{args.name}/history?limit={args.limit}")
        for entry in data["history"]:
            print(
                f"v{entry['version']}\t{entry['percentage']:g}%\t"
                f"{_iso(entry['updated_at'])}\t{entry['updated_by']}\t{entry['reason']}"
            )
    elif args.action == "backup":
        for path in _backup(args):
            print(f"wrote {path}")
    elif args.action == "export":
        text = json.dumps(call(args, "GET", "/api/flags"), indent=2) + "\n"
        if args.file:
            Path(args.file).write_text(text)
        else:
            sys.stdout.write(text)
    else:
        flags = _read_export(args.file)
        reason = args.reason or f"import from {args.file}"
        result = call(args, "POST", "/api/flags", {"flags": flags, "reason": reason})
        print(f"imported {len(result['flags'])} flag(s)")


def run_flags(args: argparse.Namespace) -> int:
    try:
        _run(args)
    except (ApiCallFailed, OSError, ValueError, KeyError) as exc:
        print(f"abgate flags: {exc}", file=sys.stderr)
        return 1
    return 0
