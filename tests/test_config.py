"""Config: parsed once into frozen values, refused as a whole with line and key path."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from abgate.config import ConfigError, load_config, parse_config

GOOD = """\
upstreams:
  deterministic:
    url: http://127.0.0.1:9001
  ml:
    url: http://127.0.0.1:9002
routes:
  - prefix: /api/agent/
    experiment: rollout
experiments:
  rollout:
    control: deterministic
    treatment: ml
    percentage: 12.5
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml")
    return [str(problem) for problem in caught.value.problems]


def test_example_config_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "config" / "abgate.yaml")
    experiment = config.experiments["ml-agent-rollout"]
    assert experiment.control.name == "deterministic"
    assert experiment.treatment.name == "ml"
    assert experiment.percentage_bp == 1000
    assert experiment.sticky[0].kind == "header"
    assert config.proxy.listen.port == 8080
    assert config.control.listen.port == 8092
    assert config.upstreams["ml"].port == 9002


def test_defaults_and_frozen() -> None:
    config = parse_config(GOOD)
    experiment = config.experiments["rollout"]
    assert experiment.percentage_bp == 1250
    assert experiment.seed == "rollout"  # seed defaults to the experiment name
    assert experiment.when_missing == "random"
    assert config.upstreams["ml"].connect_timeout == 1.0
    assert config.upstreams["ml"].read_timeout == 10.0
    assert config.proxy.max_body_size == 10 * 1024 * 1024
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy = config.proxy  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["x"] = config.upstreams["ml"]  # type: ignore[index]


def test_bad_url_names_key_path_and_line() -> None:
    text = GOOD.replace("url: http://127.0.0.1:9002", "url: ftp://nowhere")
    # Reported once: what refers to the bad upstream is not reported again.
    assert problems(text) == ['upstreams.ml.url (line 5): not a valid http URL: "ftp://nowhere"']


def test_a_host_name_longer_than_dns_allows_is_refused_and_not_echoed_whole() -> None:
    host = "a" * 100_000
    text = GOOD.replace("url: http://127.0.0.1:9002", f"url: http://{host}:9002")
    [problem] = problems(text)
    assert problem.startswith(
        "upstreams.ml.url (line 5): the host name has 100,000 characters, more than DNS "
        "allows (253)"
    )
    assert len(problem) < 300
    parse_config(GOOD.replace("127.0.0.1:9002", f"{'a' * 253}:9002"))  # as long as DNS allows


def test_every_problem_is_listed_at_once() -> None:
    text = """\
proxy:
  listen: 127.0.0.1:99999
  max_body_size: lots
  colour: blue
upstreams:
  a:
    url: http://127.0.0.1:1/path
    pool_size: 0
    read_timeout: 0s
routes:
  - prefix: api
    upstream: a
  - regex: "("
    upstream: nope
  - prefix: /x
    experiment: missing
    methods: [GET, "P O S T"]
experiments:
  missing:
    control: a
    treatment: {upstream: a}
    sticky: [{header: "bad header"}, {tea: x}, client_ip]
    when_missing: sometimes
    percentage: 10.005
"""
    assert problems(text) == [
        "proxy.colour (line 4): unknown key (expected one of: admin_listen, buffer_body_size, "
        "client_body_timeout, client_header_timeout, client_keepalive_timeout, listen, "
        "max_body_size, max_connections, max_header_size, measurements, random_seed, "
        "retry_budget, shutdown_timeout)",
        "proxy.listen (line 2): expected 'host:port' with a port of 0..65535, "
        'got "127.0.0.1:99999"',
        "proxy.max_body_size (line 3): expected a size such as 65536, '64KiB' or '10MiB', "
        'got "lots"',
        "upstreams.a.url (line 7): must not have a path or query: abgate forwards the request "
        'path unchanged, got "http://127.0.0.1:1/path"',
        "upstreams.a.read_timeout (line 9): must be more than 0s and at most 86400s, got 0s",
        "upstreams.a.pool_size (line 8): must be between 1 and 100000, got 0",
        'experiments.missing.treatment (line 21): arm name "a" is also the control arm\'s; '
        "name the arms apart",
        'experiments.missing.sticky[0].header (line 22): not a header name: "bad header"',
        "experiments.missing.sticky[1].tea (line 22): unknown sticky key source (expected "
        "header, cookie, query or client_ip)",
        "experiments.missing.when_missing (line 23): expected one of random, control, "
        'client_ip, got "sometimes"',
        "experiments.missing.percentage (line 24): at most two decimals (0.01% steps), got 10.005",
        'routes[0].prefix (line 11): must be a path starting with /, got "api"',
        "routes[1].regex (line 13): invalid regular expression: missing ), unterminated "
        "subpattern at position 0",
        'routes[1].upstream (line 14): unknown upstream "nope"',
        'routes[2].methods[1] (line 17): not an HTTP method: "P O S T"',
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("101", "must be between 0 and 100, got 101"),
        ("-1", "must be between 0 and 100, got -1"),
        ("true", "expected a number from 0 to 100, got a boolean (true)"),
        ("'ten'", 'expected a number from 0 to 100, got a string ("ten")'),
        ("'10'", 'expected a number from 0 to 100, got a string ("10")'),
        ("12.345", "at most two decimals (0.01% steps), got 12.345"),
    ],
)
def test_percentage_is_checked(value: str, message: str) -> None:
    text = GOOD.replace("percentage: 12.5", f"percentage: {value}")
    assert problems(text) == [f"experiments.rollout.percentage (line 13): {message}"]


def test_percentage_two_decimals_exact() -> None:
    config = parse_config(GOOD.replace("percentage: 12.5", "percentage: 0.01"))
    assert config.experiments["rollout"].percentage_bp == 1
    config = parse_config(GOOD.replace("percentage: 12.5", "percentage: 99.99"))
    assert config.experiments["rollout"].percentage_bp == 9999


def test_unknown_top_level_key_and_duplicates() -> None:
    text = GOOD + "experimnets: {}\n"
    assert problems(text) == [
        "experimnets (line 14): unknown key (expected one of: control, experiments, flags, "
        "history, proxy, routes, upstreams)"
    ]
    duplicated = GOOD.replace("  ml:\n", "  deterministic:\n")
    assert problems(duplicated)[0] == "upstreams.deterministic (line 4): duplicate key"


def test_yaml_syntax_error_has_line() -> None:
    # The bracket left open on line 2 is the mistake; the parser notices it on line 3.
    assert problems("upstreams:\n  a: [unclosed\n") == [
        "<document> (line 2): invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence on line 2, noticed on line 3)"
    ]


def test_route_needs_one_target_and_one_matcher() -> None:
    text = GOOD.replace("    experiment: rollout", "    experiment: rollout\n    upstream: ml")
    assert problems(text) == ["routes[0] (line 7): needs exactly one of experiment or upstream"]
    text = GOOD.replace("  - prefix: /api/agent/", "  - methods: [GET]")
    assert problems(text) == ["routes[0] (line 7): needs exactly one of prefix or regex"]


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("url: http://127.0.0.1:9002", "url: not a url"))
    ok = subprocess.run(
        [sys.executable, "-m", "abgate.control.cli", "check-config", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK (2 upstreams, 1 routes, 1 experiments)" in ok.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "abgate.control.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1
    assert f"{bad}: 1 problem" in refused.stdout
    assert 'upstreams.ml.url (line 5): not a valid http URL: "not a url"' in refused.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "abgate.control.cli", "check-config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert f"no such file (looked for {tmp_path / 'nope.yaml'})" in missing.stdout
    assert "--config" not in missing.stdout  # check-config takes the file as its argument


def test_buffer_larger_than_max_body_is_refused() -> None:
    text = "proxy:\n  max_body_size: 1KiB\n  buffer_body_size: 64KiB\n" + GOOD
    assert problems(text) == [
        "proxy.buffer_body_size (line 3): 65536 bytes is more than max_body_size (1024 bytes): "
        "a body is never buffered beyond what may be sent at all"
    ]


def test_declared_metrics_are_checked() -> None:
    def with_metrics(block: str) -> str:
        return GOOD.replace("    treatment: ml\n", "    treatment: ml\n    metrics:\n" + block)

    config = parse_config(
        with_metrics(
            "      accuracy: {type: binary, direction: higher}\n"
            "      confidence: {type: continuous, direction: higher, json: $.confidence}\n"
        )
    )
    experiment = config.experiments["rollout"]
    accuracy = experiment.metric("accuracy")
    assert accuracy is not None
    assert (accuracy.type, accuracy.direction, accuracy.from_answer) == ("binary", "higher", False)
    confidence = experiment.metric("confidence")
    assert confidence is not None
    assert confidence.json_path == ("confidence",)
    latency = experiment.metric("latency")
    assert latency is not None
    assert (latency.type, latency.direction) == ("continuous", "lower")
    assert problems(with_metrics("      accuracy: {type: ratio}\n")) == [
        "experiments.rollout.metrics.accuracy.type (line 14): must be binary or continuous, "
        'got "ratio"',
        "experiments.rollout.metrics.accuracy.direction (line 14): required: higher or lower "
        "(which way is better)",
    ]
    assert problems(with_metrics("      latency: {type: continuous, direction: higher}\n")) == [
        'experiments.rollout.metrics.latency (line 14): "latency" is built in (latency: '
        "continuous, lower is better; error: binary, lower is better)"
    ]


def test_check_config_applies_the_control_exposure_rule(tmp_path: Path) -> None:
    exposed = tmp_path / "exposed.yaml"
    exposed.write_text("control:\n  listen: 0.0.0.0:8092\n" + GOOD)
    env = {k: v for k, v in os.environ.items() if k != "ABGATE_CONTROL_TOKEN"}
    refused = subprocess.run(
        [sys.executable, "-m", "abgate.control.cli", "check-config", str(exposed)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert refused.returncode == 1
    assert (
        "0.0.0.0, which is not loopback, without a token: set ABGATE_CONTROL_TOKEN"
        in refused.stdout
    )
    allowed = subprocess.run(
        [sys.executable, "-m", "abgate.control.cli", "check-config", str(exposed)],
        capture_output=True,
        text=True,
        check=False,
        env={**env, "ABGATE_CONTROL_TOKEN": "secret"},
    )
    assert allowed.returncode == 0, allowed.stdout


def test_a_mistyped_redis_url_is_not_echoed_with_its_password() -> None:
    text = "flags:\n  redis_url: http://user:hunter2@cache:6379\n" + GOOD
    [problem] = problems(text)
    assert "hunter2" not in problem
    assert "http://user:***@cache:6379" in problem


def test_config_as_json_masks_secrets() -> None:
    from abgate.config.export import config_as_json

    config = parse_config("flags:\n  redis_url: redis://:hunter2@cache:6379/0\n" + GOOD)
    exported = config_as_json(config)
    assert exported["flags"]["redis"]["url"] == "redis://:***@cache:6379/0"
    assert exported["experiments"]["rollout"]["percentage_bp"] == 1250
    assert "hunter2" not in str(exported)


def test_config_is_pure() -> None:
    """config/ parses YAML into values; what does I/O (Redis, the state file) is state/."""
    code = (
        "import sys, config, config.parse, config.export; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'redis', 'aiohttp', 'state', 'proxy', 'control'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert result.stdout.strip() == "[]"


SENTINEL = """\
flags:
  redis:
    sentinel:
      addresses: ["10.0.0.1:26379", "10.0.0.2:26379", "[::1]:26380"]
      service: abgate
      username: watcher
      password_file: /run/secrets/sentinel
    username: abgate
    password_env: ABGATE_REDIS_PASSWORD
    tls:
      ca_file: /etc/abgate/ca.pem
history:
  postgres_url: postgresql://abgate@db/abgate?sslmode=verify-full&sslrootcert=/etc/ca.pem
  password_file: /run/secrets/pg
"""


def test_redis_through_sentinel_with_acl_and_tls() -> None:
    from abgate.config.model import SecretRef, SentinelSettings, TlsSettings

    config = parse_config(SENTINEL + GOOD)
    redis = config.flags.redis
    assert redis is not None
    assert redis.url is None
    assert redis.sentinel == SentinelSettings(
        (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)),
        "abgate",
        "watcher",
        SecretRef(file="/run/secrets/sentinel"),
        tls=True,  # the sentinels of a TLS deployment speak TLS unless told otherwise
    )
    assert redis.username == "abgate"
    assert redis.password == SecretRef(env="ABGATE_REDIS_PASSWORD")
    assert redis.tls == TlsSettings(ca_file="/etc/abgate/ca.pem")
    assert redis.uses_tls
    assert redis.wait_replicas == 1  # with sentinel, writes wait for a replica by default
    assert config.history.password == SecretRef(file="/run/secrets/pg")
    assert str(config.history.password) == "file /run/secrets/pg"


def test_redis_url_is_the_short_form_and_waits_for_no_replica() -> None:
    short = parse_config("flags:\n  redis_url: rediss://cache:6380/0\n" + GOOD).flags.redis
    long = parse_config("flags:\n  redis:\n    url: rediss://cache:6380/0\n" + GOOD).flags.redis
    assert short == long
    assert short is not None
    assert short.uses_tls
    assert short.wait_replicas == 0
    assert parse_config(GOOD).flags.redis is None


def test_redis_connection_problems_name_their_key_and_line() -> None:
    text = (
        """\
flags:
  redis:
    url: redis://cache:6379/0
    sentinel: {service: abgate}
    db: 3
    password_env: "not a name"
    password_file: /x
    tls: {cert_file: /c.pem, verify: no}
    wait_replicas: -1
"""
        + GOOD
    )
    found = problems(text)
    assert "flags.redis (line 2): needs exactly one of url (one server) or sentinel" in found
    assert "flags.redis.db (line 5): with url, the database is the URL's path (/0)" in found
    assert "flags.redis (line 2): password_env and password_file: give one of them" in found
    assert any(p.startswith("flags.redis.tls.verify (line 8): unknown key") for p in found)
    assert (
        "flags.redis.tls (line 8): cert_file and key_file go together (a client certificate)"
        in found
    )
    assert "flags.redis.wait_replicas (line 9): must be between 0 and 16, got -1" in found
    sentinel = problems(
        "flags:\n  redis:\n    sentinel:\n      addresses: [a.example:0, 'nope']\n"
        "    tls: {ca_file: /ca.pem}\n" + GOOD
    )
    assert "flags.redis.sentinel.addresses[0] (line 4): a sentinel needs a port" in sentinel
    assert any(p.startswith("flags.redis.sentinel.addresses[1] (line 4)") for p in sentinel)
    assert any(p.startswith("flags.redis.sentinel.service (line 3)") for p in sentinel)
    both = problems("flags:\n  redis_url: redis://a:1/0\n  redis: {url: 'redis://b:1/0'}\n" + GOOD)
    assert both == ["flags (line 1): redis_url and redis: give one of them"]
    plain = problems("flags:\n  redis: {url: 'redis://a:1/0', tls: {ca_file: /ca.pem}}\n" + GOOD)
    assert plain == ["flags.redis.tls (line 2): TLS needs a rediss:// URL"]
    twice = problems("flags:\n  redis: {url: 'redis://:pw@a:1/0', password_env: P}\n" + GOOD)
    assert twice == ["flags.redis (line 2): the URL holds a password already: give it in one place"]


def test_passwords_in_urls_are_masked_in_every_place_shown() -> None:
    from abgate.config.export import config_as_json

    text = (
        "flags:\n  redis: {url: 'redis://abgate:hunter2@cache:6379/0'}\n"
        "history:\n  postgres_url: postgresql://u:hunter3@db/x?password=hunter4\n" + GOOD
    )
    exported = config_as_json(parse_config(text))
    assert exported["flags"]["redis"]["url"] == "redis://abgate:***@cache:6379/0"
    assert exported["history"]["postgres_url"] == "postgresql://u:***@db/x?password=***"
    assert "hunter" not in str(exported)


# The "billion laughs" of YAML: nine levels of nine aliases each, about 1.4 KB of text that
# would expand to 9**9 (387 million) strings.
ALIAS_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{level}: &{level} [{','.join([f'*{previous}'] * 9)}]\n"
        for previous, level in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + GOOD
)


def test_an_alias_bomb_is_refused_with_its_line_before_expanding() -> None:
    assert len(ALIAS_BOMB.encode()) < 1500
    with pytest.raises(ConfigError) as caught:
        parse_config(ALIAS_BOMB, "bomb.yaml")
    (problem,) = caught.value.problems
    # Level f holds 9**5 values: the first alias past 100,000 in all is on level f's line.
    assert problem.line == 6
    assert "aliases would expand to more than 100,000 values (at alias *e)" in problem.message
    assert str(problem).startswith("<document> (line 6): YAML aliases")


@pytest.mark.parametrize("nested", ["[" * 500 + "]" * 500, "{a: " * 500 + "1" + "}" * 500])
def test_yaml_nested_too_deep_is_one_problem_not_a_traceback(nested: str) -> None:
    """A trial's 500 levels ended in a RecursionError traceback (check-config, run, reload)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"proxy:\n  listen: {nested}\n", "deep.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.message) == (
        2,
        "nested deeper than 64 levels: no setting is that deep (a parser would exhaust its stack)",
    )


def test_aliases_reused_within_the_limit_are_fine() -> None:
    shared = "  u0: &u {url: http://127.0.0.1:9001, read_timeout: 5s}\n"
    text = GOOD.replace(
        "upstreams:\n", "upstreams:\n" + shared + "".join(f"  u{i}: *u\n" for i in range(1, 2000))
    )
    config = parse_config(text)
    assert len(config.upstreams) == 2002
    assert config.upstreams["u1999"].read_timeout == 5.0


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    from abgate.config.layers import MAX_CONFIG_BYTES

    path = tmp_path / "big.yaml"
    path.write_bytes(GOOD.encode() + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    refused = [str(p) for p in caught.value.problems]
    assert refused == ["<document>: the file is over 4 MiB: refused"]
    path.write_bytes(GOOD.encode() + b"# padding\n" * ((1024 * 1024) // 10))  # 1 MiB: fine
    assert load_config(path).experiments["rollout"].percentage_bp == 1250


def test_a_sticky_source_with_its_name_left_out_is_refused() -> None:
    """`- header:` with the name forgotten became client-IP stickiness (a trial): users
    behind one NAT would share an arm with no word."""
    text = """\
upstreams:
  a: {url: "http://127.0.0.1:1"}
  b: {url: "http://127.0.0.1:2"}
routes: [{prefix: /, experiment: e}]
experiments:
  e:
    control: a
    treatment: b
    percentage: 10
    sticky:
      - header:
      - query: null
"""
    assert problems(text) == [
        "experiments.e.sticky[0] (line 11): {header: } names no header: expected {header: NAME}",
        "experiments.e.sticky[1] (line 12): {query: } names no query: expected {query: NAME}",
    ]


def test_a_yaml_merge_key_is_named_with_the_way_out_and_the_rest_reported() -> None:
    """The merge key is left out (and said so, at its key); what else is wrong is listed in
    the same run (a trial: the merge key hid every other problem)."""
    text = GOOD.replace(
        "  ml:\n", "  ml:\n    <<: {pool_size: 4}\n    read_timeout: soon\n"
    ).replace("percentage: 12.5", "percentage: 200")
    assert problems(text) == [
        "upstreams.ml.<< (line 5): invalid YAML: YAML merge keys (<<) are not supported: "
        "use extends: or repeat the keys",
        "upstreams.ml.read_timeout (line 6): expected a duration such as 1.5, '250ms' or "
        "'5s', got \"soon\"",
        "experiments.rollout.percentage (line 15): must be between 0 and 100, got 200",
    ]
    value = "defaults: &d {pool_size: 4}\nupstreams:\n  a: <<\n"  # `<<` as a value
    assert (
        "upstreams.a (line 3): invalid YAML value: YAML merge keys (<<) are not "
        in (problems(value)[0])
    )


def test_the_control_exposure_rule_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    """A trial: the exposure of control.listen was said only once everything else was fixed."""
    path = tmp_path / "exposed.yaml"
    path.write_text("control:\n  listen: 0.0.0.0:8092\nproxy: {max_body_size: lots}\n" + GOOD)
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_exposure=True, control_token=None)
    assert [str(problem) for problem in caught.value.problems] == [
        "proxy.max_body_size (line 3): expected a size such as 65536, '64KiB' or '10MiB', "
        'got "lots"',
        "control.listen (line 2): the control API would listen on 0.0.0.0, which is not "
        "loopback, without a token: set ABGATE_CONTROL_TOKEN",
    ]
    with pytest.raises(ConfigError) as caught:  # with a token, the other problem alone
        load_config(path, check_exposure=True, control_token="secret")
    assert [problem.path for problem in caught.value.problems] == ["proxy.max_body_size"]
    with pytest.raises(ConfigError) as caught:  # the servers judge it themselves
        load_config(path)
    assert [problem.path for problem in caught.value.problems] == ["proxy.max_body_size"]


ROLLOUT = (
    GOOD
    + """\
    metrics:
      accuracy: {type: binary, direction: sideways}
    rollout:
      primary: {metric: accuracy, minimum_detectable_effect: 0.01}
      stages: [50, 10, 100]
"""
)


def test_a_bad_metric_does_not_hide_its_experiments_rollout_problems() -> None:
    """A trial: the plan was not read while a metric was refused. It is read with the
    metrics' names, so a plan naming the refused one is not told it is unknown."""
    assert problems(ROLLOUT) == [
        "experiments.rollout.metrics.accuracy.direction (line 15): must be higher or lower "
        '(which way is better), got "sideways"',
        "experiments.rollout.rollout.stages[1] (line 18): stages must rise: each above the one "
        "before",
    ]


def test_an_unknown_key_in_a_rollout_plan_does_not_hide_its_other_problems() -> None:
    """A trial: an unknown key stopped the plan's checks across its settings."""
    text = ROLLOUT.replace("sideways", "higher").replace(
        "      stages:", "      bake_time: 1h\n      power: 0.01\n      stages:"
    )
    assert problems(text) == [
        "experiments.rollout.rollout.bake_time (line 18): unknown key (expected one of: alpha, "
        "bake, breaker_grace, guardrails, holdout, max_hold, min_duration, power, primary, "
        "slo, stages, tick)",
        "experiments.rollout.rollout.stages[1] (line 20): stages must rise: each above the one "
        "before",
        "experiments.rollout.rollout.power (line 19): must be above alpha (0.05), got 0.01",
    ]


def test_a_key_that_is_a_list_or_a_mapping_is_named_as_such() -> None:
    """`? [a]` made a key of PyYAML's node repr, echoed four times (trial)."""
    text = GOOD.replace("experiments:\n", "experiments:\n  ? [a]\n  : {}\n  ? {b: 1}\n  : {}\n", 1)
    found = problems(text)
    assert [p.split(": ", 1)[1] for p in found] == [
        "a key is a list; keys here are names",
        "a key is a mapping; keys here are names",
    ], found
    assert not any("Node(" in p for p in found)
