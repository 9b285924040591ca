"""Override files (`extends:`), experiment groups and the default experiment: validated as
a whole like every other key, each problem named with the file and line it was written on."""

from __future__ import annotations

from pathlib import Path

import pytest

from abgate.config import ConfigError, load_config, parse_config
from tests.test_config import GOOD

TWO = (
    GOOD
    + """\
  other:
    control: deterministic
    treatment: ml
    percentage: 0
"""
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_override_merges_mappings_and_replaces_the_rest(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", GOOD + "    sticky: [{header: X-User-Id}]\n")
    override = write(
        tmp_path / "fast.yaml",
        "extends: base.yaml\n"
        "proxy: {listen: 127.0.0.1:0}\n"
        "experiments:\n"
        "  rollout:\n"
        "    percentage: 5\n"
        "    sticky: [{cookie: uid}]\n",
    )
    config = load_config(override)
    experiment = config.experiments["rollout"]
    assert experiment.percentage_bp == 500  # the override's
    assert experiment.control.upstream == "deterministic"  # the base's, kept
    assert [s.name for s in experiment.sticky] == ["uid"]  # a list is replaced whole
    assert config.proxy.listen.port == 0
    assert config.upstreams["ml"].url == "http://127.0.0.1:9002"


def test_a_problem_names_the_file_and_line_it_was_written_on(tmp_path: Path) -> None:
    base = GOOD.replace("http://127.0.0.1:9002", "ftp://x")  # and what its YAML refused:
    write(tmp_path / "base.yaml", base.replace("  ml:\n", "  ml:\n    <<: {pool_size: 4}\n"))
    override = write(tmp_path / "over.yaml", "extends: base.yaml\nproxy:\n  listen: nowhere\n")
    with pytest.raises(ConfigError) as caught:
        load_config(override)
    shown = [str(p) for p in caught.value.problems]
    assert shown[0].startswith(f"upstreams.ml.<< ({tmp_path / 'base.yaml'} line 5): "), shown
    assert any(s.startswith(f"upstreams.ml.url ({tmp_path / 'base.yaml'} line 6)") for s in shown)
    assert any(s.startswith("proxy.listen (line 3)") for s in shown), shown


@pytest.mark.parametrize(
    ("extends", "message"),
    [
        ("missing.yaml", "no such file"),
        ("over.yaml", "extends this file again (a cycle)"),
        ("[]", "expected the path of the file this one overrides"),
    ],
)
def test_a_bad_extends_is_refused(tmp_path: Path, extends: str, message: str) -> None:
    override = write(tmp_path / "over.yaml", f"extends: {extends}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(override)
    assert message in str(caught.value)


def test_a_cycle_through_two_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(tmp_path / "a.yaml")


def test_groups_and_the_default_experiment() -> None:
    config = parse_config(
        TWO
        + "control:\n  default_experiment: other\n"
        + "  groups: {ml-agents: [rollout, other, rollout]}\n"
    )
    assert config.control.default_experiment == "other"
    assert dict(config.control.groups) == {"ml-agents": ("rollout", "other")}
    assert config.control.report_time_scale == 1.0


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ("default_experiment: nope", "control.default_experiment (line 19): unknown experiment"),
        ("groups: {rollout: [other]}", "is an experiment's name: a group needs its own"),
        ("groups: {g: [nope]}", "unknown experiment(s): ['nope']"),
        ("groups: {g: []}", "expected a non-empty list of experiment names"),
        ("groups: [a]", "expected a mapping of group name to a list of experiments"),
        ("report_time_scale: 0", "expected a number from 1 to 1e7"),
    ],
)
def test_bad_groups_and_defaults_are_refused(control: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(TWO + f"control:\n  {control}\n", "test.yaml")
    assert message in str(caught.value)


def test_a_base_that_is_not_yaml_hides_none_of_the_files_own_unknown_keys(
    tmp_path: Path,
) -> None:
    """A trial: a broken base was the only problem said, without the file extending it."""
    write(tmp_path / "brokenbase.yaml", "proxy: {shutdown_timeout: [bad\n")
    top = write(
        tmp_path / "top.yaml",
        "extends: brokenbase.yaml\ncontrol: {listen: 0.0.0.0:1, bogus: 1}\nproxy: {x: 1}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(top)
    assert caught.value.source == str(top)
    shown = [str(p) for p in caught.value.problems]
    assert len(shown) == 3, shown
    assert shown[0].startswith(f"<document> ({tmp_path / 'brokenbase.yaml'} line 1): invalid")
    assert shown[0].endswith(f"; extended by {top.resolve()}")
    own = sorted(shown[1:])  # the top file's own keys, judged without the base
    assert own[0].startswith("control.bogus (line 2): unknown key (expected one of: ")
    assert own[1].startswith("proxy.x (line 3): unknown key (expected one of: ")


@pytest.mark.parametrize(
    ("text", "got"), [("- 1\n", "a list"), ("x\n", 'a string ("x")'), ("~\n", "nothing")]
)
def test_a_base_that_is_not_a_mapping_is_refused_not_taken_as_empty(
    tmp_path: Path, text: str, got: str
) -> None:
    """A trial: a list or a plain value as a base was merged as if empty (an empty file is an
    empty mapping, which overrides nothing)."""
    write(tmp_path / "base.yaml", text)
    top = write(tmp_path / "top.yaml", "extends: base.yaml\n" + GOOD)
    with pytest.raises(ConfigError) as caught:
        load_config(top)
    [problem] = [str(p) for p in caught.value.problems]
    assert problem == (
        f"<document> ({tmp_path / 'base.yaml'} line 1): expected a mapping of settings, "
        f"got {got}; extended by {top.resolve()}"
    )


def test_a_missing_base_names_the_file_extending_it(tmp_path: Path) -> None:
    top = write(tmp_path / "top.yaml", "extends: later.yaml\nhistory: {bogus: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(top)
    missing, own = caught.value.problems
    assert str(missing) == (
        f"<document> ({tmp_path / 'later.yaml'}): no such file (looked for "
        f"{tmp_path / 'later.yaml'}); extended by {top.resolve()}"
    )
    assert (own.path, own.line, own.file) == ("history.bogus", 2, None)


def test_a_file_that_cannot_be_read_is_said_in_words(tmp_path: Path) -> None:
    """A trial: Python's own words ("[Errno 21] Is a directory", "'utf-8' codec can't
    decode byte 0xff in position 30")."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        "<document>: is a directory, not a config file"
    ]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"proxy:\n  listen: 127.0.0.1:0\nupstreams: {a: {url: \xff}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert [str(p) for p in caught.value.problems] == [
        "<document> (line 3): not UTF-8 text: byte 0xff"
    ]
