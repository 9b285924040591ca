"""The `abgate` command: run, proxy, check-config."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

from abgate.config import ConfigError
from abgate.config.export import credential_notes
from abgate.control.flags_cli import add_flags_parser, run_flags
from abgate.control.load_test import add_load_test_parser, run_load_test
from abgate.control.log import configure_logging
from abgate.control.rollout_cli import add_rollout_parser, run_rollout
from abgate.control.simulate import add_simulate_parser, run_simulate

DEFAULT_CONFIG = "config/abgate.yaml"


def _version() -> str:
    try:
        return version("abgate")
    except PackageNotFoundError:  # running from a checkout that was not installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abgate",
        description="Reverse-proxy sidecar for the gradual rollout of ML "
        "decisions: sticky A/B splitting, measured on every request.",
    )
    parser.add_argument("--version", action="version", version=f"abgate {_version()}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ABGATE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO; env ABGATE_LOG_LEVEL)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="proxy and control API on one machine (the embedded default, no Redis)",
        description="Serve the proxy and the control API: two processes, the data plane and "
        "the control process (statistics, rollouts, reloads), started, restarted and stopped "
        "together. Flags live in the control process and reach the data plane over a local "
        "socket; no Redis is needed.",
    )
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")

    proxy = commands.add_parser(
        "proxy",
        help="data plane only, optionally several workers on one port",
        description="Serve only the proxy. With --workers N, N processes share the port "
        "(SO_REUSEPORT); worker i serves /metrics and /health on "
        "proxy.admin_listen's port + i.",
    )
    proxy.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")
    proxy.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    control = commands.add_parser(
        "control",
        help="control API and flag writer only (flags in Redis)",
        description="Serve the control API without a data plane. Needs flags.redis (or "
        "flags.redis_url, or ABGATE_REDIS_URL): proxies (`abgate proxy`) take their flags from "
        "Redis.",
    )
    control.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file and list every problem",
        description="Validate FILE as a whole. Prints every problem with its key path and "
        "YAML line; exits 1 if there is any.",
    )
    check.add_argument("file", nargs="?")
    # --config too, as run, proxy, control and db take it (a trial typed it and got exit 2)
    check.add_argument("--config", dest="config_file", metavar="FILE")
    db = commands.add_parser(
        "db",
        help="the history store in PostgreSQL",
        description="`abgate db migrate`: create or bring up to date the ab_testing schema "
        "(scripts/sql/ab-testing-schema.sql; TimescaleDB when available) at history.postgres_url "
        "or ABGATE_HISTORY_URL; safe to run again. `abgate db maintain`: create the day "
        "partitions ahead, drop those past the retention (the control process does it hourly).",
    )
    db.add_argument("action", choices=["migrate", "maintain"])
    db.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")
    add_flags_parser(commands)
    add_rollout_parser(commands)
    add_load_test_parser(commands)
    add_simulate_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # the rest of it: a reader gone is seen here, not at exit
        return code
    except BrokenPipeError:
        # The reader left (`abgate rollout history | head -1`): stop quietly, as a Unix tool
        # does, with stdout pointed away so that the interpreter's last flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    os.environ["ABGATE_LOG_LEVEL"] = args.log_level  # inherited by worker processes
    if args.command == "flags":
        return run_flags(args)
    if args.command == "rollout":
        return run_rollout(args)
    if args.command == "load-test":
        return run_load_test(args)
    if args.command == "simulate":
        return run_simulate(args)
    try:
        if args.command == "check-config":
            from abgate.config.parse import load_config  # the parser: only where a file is read

            if args.file is None and args.config_file is None:
                parser.error("check-config: which file? give it as FILE or --config FILE")
            if args.file is not None and args.config_file is not None:
                parser.error("check-config: give the file once, as FILE or --config FILE")
            args.file = args.file or args.config_file
            config = load_config(
                args.file,
                check_exposure=True,  # what `abgate run` and `abgate control` would refuse
                control_token=os.environ.get("ABGATE_CONTROL_TOKEN"),
            )
            for note in credential_notes(config):
                print(f"{args.file}: note: {note}")
            print(
                f"{args.file}: OK ({len(config.upstreams)} upstreams, {len(config.routes)} "
                f"routes, {len(config.experiments)} experiments)"
            )
            return 0
        if args.command == "db":
            from abgate.config.parse import load_config
            from abgate.control.history import run_db

            return run_db(load_config(args.config), args.action)
        # The servers, imported only to serve: `abgate flags` and check-config start fast.
        if args.command == "run":
            from abgate.control.supervisor import run_supervised

            return run_supervised(args.config)
        from abgate.control.serve import run_control, run_workers

        if args.command == "control":
            run_control(args.config)
            return 0
        if args.workers < 1:
            print("abgate: --workers must be at least 1", file=sys.stderr)
            return 2
        return run_workers(args.config, args.workers)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr if args.command != "check-config" else sys.stdout)
        return 1
    except BrokenPipeError:
        raise  # the reader of stdout left: `main` ends quietly
    except (ValueError, OSError) as exc:
        print(f"abgate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
