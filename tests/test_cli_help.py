"""Every command and subcommand of `abgate` answers --help (a `%` in a help text once made
`abgate rollout --help` crash with "ValueError: incomplete format")."""

from __future__ import annotations

import argparse

import pytest

from abgate.control.cli import build_parser, main


def commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*prefix, name))
    return found


ALL = commands(build_parser())


def test_every_command_is_found() -> None:
    assert {("rollout", "abort"), ("simulate",), ("flags", "backup"), ("load-test",)} <= set(ALL)
    assert len(ALL) > 20


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: abgate {' '.join(command)}".rstrip())


def test_check_config_takes_the_file_as_run_does_too(capsys: pytest.CaptureFixture[str]) -> None:
    """`abgate check-config --config FILE`, as run, proxy, control and db take it."""
    assert main(["check-config", "--config", "config/abgate.yaml"]) == 0
    assert main(["check-config", "config/abgate.yaml"]) == 0
    assert capsys.readouterr().out.count("config/abgate.yaml: OK") == 2
    with pytest.raises(SystemExit):
        main(["check-config"])
    assert "check-config: which file? give it as FILE or --config FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check-config", "a.yaml", "--config", "b.yaml"])
    assert "give the file once" in capsys.readouterr().err


def test_a_reader_gone_ends_it_quietly() -> None:
    """`abgate rollout history | head -1`: the reader leaves; abgate stops as a Unix tool
    does (status 141, SIGPIPE's), not with a BrokenPipeError traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    read, write = os.pipe()
    os.close(read)  # gone before a byte is written
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "abgate"), "check-config", "config/abgate.yaml"],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert done.stderr.decode() == ""
    assert done.returncode == 141


@pytest.mark.parametrize(
    "argv",
    [
        ["rollout", "status", "x", "--url", "http://u:1", "--token", "t"],
        ["rollout", "--url", "http://u:1", "--token", "t", "status", "x"],
        ["flags", "list", "--url", "http://u:1", "--token", "t"],
        ["flags", "--url", "http://u:1", "--token", "t", "list"],
    ],
)
def test_url_and_token_come_before_or_after_the_action(argv: list[str]) -> None:
    """`abgate rollout status X --url U` was 'unrecognized arguments' (trial)."""
    args = build_parser().parse_args(argv)
    assert (args.url, args.token) == ("http://u:1", "t")


def test_without_url_the_default_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABGATE_CONTROL_URL", raising=False)
    args = build_parser().parse_args(["rollout", "status", "x"])
    assert args.url == "http://127.0.0.1:8092"  # not SUPPRESSed away
