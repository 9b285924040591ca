"""Hot config reload: validated first, swapped atomically, under load, by API, file and SIGHUP."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from abgate.config import ConfigError, load_config
from abgate.control.reload import ReloadOutcome
from abgate.control.serve import embedded
from tests.processes import abgate, config_document, write_config
from tests.servers import echo_app, serve_app, until


def document(control: str, treatment: str, **extra: Any) -> dict[str, Any]:
    routes = [{"prefix": "/api/", "experiment": "exp"}, *extra.pop("routes", [])]
    upstreams = {
        "control": {"url": control},
        "treatment": {"url": treatment},
        **extra.pop("upstreams", {}),
    }
    return {
        "proxy": {"listen": "127.0.0.1:0", "random_seed": 1},
        "control": {"listen": "127.0.0.1:0"},
        "flags": {"state_file": None},
        "upstreams": upstreams,
        "routes": routes,
        "experiments": {
            "exp": {
                "control": "control",
                "treatment": "treatment",
                "sticky": [{"header": "X-User-Id"}],
                "percentage": 50,
            }
        },
    }


def metric(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def test_reload_under_load_valid_and_invalid(tmp_path: Path, session: ClientSession) -> None:
    async with (
        serve_app(echo_app()) as one,
        serve_app(echo_app()) as two,
        serve_app(echo_app()) as three,
    ):
        path = tmp_path / "abgate.yaml"
        path.write_text(yaml.safe_dump(document(one, two)))
        async with embedded(load_config(path), config_path=str(path)) as running:
            base, control = running.proxy_url, running.control_url
            async with session.get(f"{base}/new/x") as response:
                assert response.status == 404  # no such route yet
            statuses: Counter[int] = Counter()
            stop = asyncio.Event()

            async def load() -> None:
                for count in range(5000):  # bounded in count and time
                    if stop.is_set():
                        return
                    async with session.post(
                        f"{base}/api/d", data=b"{}", headers={"X-User-Id": f"u{count}"}
                    ) as response:
                        statuses[response.status] += 1
                        await response.read()

            loaders = [asyncio.create_task(load()) for _ in range(4)]
            try:
                await reload_twice(session, path, base, control, statuses, one, two, three)
            finally:
                stop.set()
                await asyncio.gather(*loaders)
            async with session.get(f"{control}/metrics") as response:
                text = await response.text()
    assert set(statuses) == {200}, statuses  # no request failed across both reloads
    assert metric(text, 'abgate_config_reload_total{result="success"}') == 1
    assert metric(text, 'abgate_config_reload_total{result="failure"}') == 1


async def reload_twice(
    session: ClientSession,
    path: Path,
    base: str,
    control: str,
    statuses: Counter[int],
    one: str,
    two: str,
    three: str,
) -> None:
    await until(lambda: statuses.total() > 200)
    async with session.get(f"{control}/metrics") as response:
        connects_before = metric(
            await response.text(), 'abgate_upstream_connects_total{upstream="control"}'
        )

    # A valid change: a new upstream and route; control and treatment unchanged.
    path.write_text(
        yaml.safe_dump(
            document(
                one,
                two,
                upstreams={"extra": {"url": three}},
                routes=[{"prefix": "/new/", "upstream": "extra"}],
            )
        )
    )
    async with session.post(f"{control}/api/config/reload") as response:
        assert response.status == 200
        outcome = await response.json()
    assert outcome["result"] == "success"
    assert outcome["warnings"] == []
    async with session.get(f"{control}/health/aggregate") as response:
        config_health = (await response.json())["components"]["config"]
    assert (config_health["status"], config_health["reasons"]) == ("healthy", [])
    seen = statuses.total()
    await until(lambda: statuses.total() > seen + 200)
    async with session.get(f"{base}/new/x") as response:
        assert response.status == 200  # the next request uses the new config

    # An invalid change is refused whole; the running config stays.
    bad = document(one, two)
    bad["upstreams"]["control"]["url"] = "not a url"
    bad["routes"].append({"prefix": "/x/", "upstream": "nowhere"})
    path.write_text(yaml.safe_dump(bad))
    async with session.post(f"{control}/api/config/reload") as response:
        assert response.status == 400
        refused = await response.json()
    assert refused["result"] == "failure"
    lines = path.read_text().splitlines()
    url_line = lines.index("    url: not a url") + 1
    route_line = next(i for i, text in enumerate(lines, 1) if text.strip() == "upstream: nowhere")
    assert refused["problems"] == [
        f'upstreams.control.url (line {url_line}): not a valid http URL: "not a url"',
        f'routes[1].upstream (line {route_line}): unknown upstream "nowhere"',
    ]
    seen = statuses.total()
    await until(lambda: statuses.total() > seen + 200)
    async with session.get(f"{base}/new/x") as response:
        assert response.status == 200  # still the last good config
    async with session.get(f"{control}/api/config") as response:
        status = await response.json()
    assert status["last_reload"]["result"] == "failure"
    assert status["reloads"] == {"success": 1, "failure": 1}
    # The operator sees it without asking the config endpoint: the aggregate is degraded,
    # and says why and what is served instead.
    async with session.get(f"{control}/health/aggregate") as response:
        health = await response.json()
    assert health["overall_health"] == "degraded"
    [reason] = health["components"]["config"]["reasons"]
    assert reason.startswith("config reload (api) refused: upstreams.control.url (line ")
    assert "(and 1 more); serving the config loaded at " in reason
    async with session.get(f"{control}/metrics") as response:
        text = await response.text()
    # The unchanged upstream kept its pool: no connection had to be opened again.
    assert metric(text, 'abgate_upstream_connects_total{upstream="control"}') == connects_before
    assert metric(text, "abgate_config_last_reload_successful") == 0  # what the alert reads


async def test_file_change_is_picked_up(tmp_path: Path, session: ClientSession) -> None:
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        path = tmp_path / "abgate.yaml"
        path.write_text(yaml.safe_dump(document(one, two)))
        async with embedded(load_config(path), config_path=str(path)) as running:
            assert running.reloader is not None
            reloader = running.reloader
            path.write_text(
                yaml.safe_dump(
                    document(one, two, routes=[{"prefix": "/watched/", "upstream": "treatment"}])
                )
            )
            await until(lambda: reloader.counts["success"] == 1)  # the watcher polls the file
            assert reloader.last is not None
            assert reloader.last.trigger == "file change"
            async with session.get(f"{running.proxy_url}/watched/x") as response:
                assert response.status == 200


async def test_an_edit_of_a_file_it_extends_is_picked_up(
    tmp_path: Path, session: ClientSession, monkeypatch: Any
) -> None:
    """The watcher looks at every file of the `extends:` chain, and follows the chain when
    it changes: a base newly named and refused is watched too, and its fix picked up."""
    from abgate.control import reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_INTERVAL", 0.02)
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        base, other, path = tmp_path / "base.yaml", tmp_path / "other.yaml", tmp_path / "a.yaml"
        base.write_text(yaml.safe_dump(document(one, two)))
        path.write_text("extends: base.yaml\n")
        async with embedded(load_config(path), config_path=str(path)) as running:
            reloader = running.reloader
            assert reloader is not None
            assert reloader.watched == (path, base)

            async def after(change: Path, text: str) -> ReloadOutcome:
                seen = reloader.outcomes
                change.write_text(text)
                async with asyncio.timeout(60):  # a guard: the outcome is awaited
                    return await reloader.next_outcome(seen)

            watched = document(one, two, routes=[{"prefix": "/watched/", "upstream": "treatment"}])
            outcome = await after(base, yaml.safe_dump(watched))
            assert (outcome.result, outcome.trigger) == ("success", "file change")
            async with session.get(f"{running.proxy_url}/watched/x") as response:
                assert response.status == 200

            refused = document(one, two)
            refused["proxy"]["max_body_size"] = "lots"
            other.write_text(yaml.safe_dump(refused))
            outcome = await after(path, "extends: other.yaml\n")
            assert outcome.result == "failure"
            assert outcome.problems[0].startswith(f"proxy.max_body_size ({other} line "), outcome
            assert reloader.watched == (path, base, other)  # the running chain, and the refused

            fixed = document(one, two, routes=[{"prefix": "/other/", "upstream": "treatment"}])
            outcome = await after(other, yaml.safe_dump(fixed))
            assert (outcome.result, outcome.trigger) == ("success", "file change")
            assert reloader.watched == (path, other)
            async with session.get(f"{running.proxy_url}/other/x") as response:
                assert response.status == 200


async def test_sighup_reloads_the_running_process(tmp_path: Path, session: ClientSession) -> None:
    async with serve_app(echo_app()) as upstream:
        path = write_config(tmp_path / "c.yaml", config_document(upstream))
        async with abgate(
            "run", "--config", str(path), expect={"proxy": 1, "control API": 1}
        ) as process:
            control = process.url("control API")
            process.proc.send_signal(signal.SIGHUP)

            async def reloaded() -> dict[str, Any]:
                async with session.get(f"{control}/api/config") as response:
                    return await response.json()  # type: ignore[no-any-return]

            async with asyncio.timeout(60):
                while (status := await reloaded())["last_reload"] is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # another process: nothing to await but HTTP
            assert status["last_reload"]["trigger"] == "signal"
            # The file is the one running: handled, nothing to apply.
            assert status["last_reload"]["result"] == "unchanged"
            assert status["reloads"] == {"success": 0, "failure": 0}
            assert await process.stop() == 0


async def test_one_change_and_an_api_reload_count_once(
    tmp_path: Path, session: ClientSession, monkeypatch: Any
) -> None:
    from abgate.control import reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_INTERVAL", 0.02)
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        path = tmp_path / "abgate.yaml"
        path.write_text(yaml.safe_dump(document(one, two)))
        async with embedded(load_config(path), config_path=str(path)) as running:
            assert running.reloader is not None
            path.write_text(
                yaml.safe_dump(
                    document(one, two, routes=[{"prefix": "/new/", "upstream": "treatment"}])
                )
            )
            async with session.post(f"{running.control_url}/api/config/reload") as response:
                assert response.status == 200
                assert (await response.json())["result"] in ("success", "unchanged")
            # Nothing more happens: the watcher looks at the settled file three more times.
            reloader, looked = running.reloader, running.reloader.checks
            await until(lambda: reloader.checks >= looked + 3)
            assert reloader.counts == {"success": 1, "failure": 0}


async def test_yaml_that_cannot_be_built_is_refused_and_the_watcher_lives_on(
    tmp_path: Path, session: ClientSession, monkeypatch: Any
) -> None:
    from abgate.control import reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_INTERVAL", 0.02)
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        path = tmp_path / "abgate.yaml"
        good = yaml.safe_dump(document(one, two))
        path.write_text(good)
        async with embedded(load_config(path), config_path=str(path)) as running:
            reloader = running.reloader
            assert reloader is not None
            for index, bad in enumerate(
                ('!!binary "bad"', "!foo x", '!!int "abc"', "!!timestamp 2020-13-45", "&x [*x]"),
                start=1,
            ):
                path.write_text(good + f"extra: {bad}\n")
                await until(lambda i=index: reloader.counts["failure"] == i)  # type: ignore[misc]
                assert reloader.last is not None
                assert reloader.last.trigger == "file change"
                assert reloader.last.problems[0].startswith(("extra (line ", "extra[0] (line "))
            async with session.post(f"{running.control_url}/api/config/reload") as response:
                assert response.status == 400
                assert response.content_type == "application/json"
            path.write_text(
                yaml.safe_dump(
                    document(one, two, routes=[{"prefix": "/after/", "upstream": "treatment"}])
                )
            )
            await until(lambda: reloader.counts["success"] == 1)  # still watching
            async with session.get(f"{running.proxy_url}/after/x") as response:
                assert response.status == 200


async def test_a_reload_is_parsed_elsewhere_and_bounded(
    tmp_path: Path, session: ClientSession
) -> None:
    """An alias bomb and a file over the size limit are refused with what is wrong with them,
    and a parse that takes too long is killed: the running config stays and requests pass."""
    from abgate.config.layers import MAX_CONFIG_BYTES
    from abgate.config.yaml_lines import MAX_ALIAS_VALUES
    from abgate.control.config_process import parse_off_loop
    from tests.test_config import ALIAS_BOMB

    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        path = tmp_path / "abgate.yaml"
        good = yaml.safe_dump(document(one, two))
        path.write_text(good)
        async with embedded(load_config(path), config_path=str(path)) as running:
            bomb = ALIAS_BOMB.split("upstreams:")[0] + good  # the bomb, then a good config
            path.write_text(bomb)
            async with session.post(f"{running.control_url}/api/config/reload") as response:
                assert response.status == 400
                (problem,) = (await response.json())["problems"]
            assert problem.startswith("<document> (line 6): YAML aliases would expand")
            assert f"{MAX_ALIAS_VALUES:,}" in problem

            path.write_text(good + "#" * MAX_CONFIG_BYTES)
            async with session.post(f"{running.control_url}/api/config/reload") as response:
                assert (await response.json())["problems"] == [
                    "<document>: the file is over 4 MiB: refused"
                ]
            async with session.post(
                f"{running.proxy_url}/api/d", data=b"{}", headers={"X-User-Id": "u"}
            ) as response:
                assert response.status == 200
            assert running.reloader is not None
            assert running.reloader.counts == {"success": 0, "failure": 2}

        path.write_text(good)
        with pytest.raises(ConfigError) as caught:
            await parse_off_loop(path, within=0.001)  # a child cannot even start that fast
        assert str(caught.value.problems[0]) == "<document>: parsing took over 0.001s: refused"
        parsed = await parse_off_loop(path)
        assert parsed.config == load_config(path)


async def test_a_large_config_travels_in_pieces_and_arrives_whole() -> None:
    """What the control process sends its data plane: long fields pickled in slices that
    the data plane loads one at a time between requests."""
    from abgate.config import parse_config
    from abgate.control.config_process import PIECE, dumps, loads_config, loads_config_gradually

    upstreams = {f"u{i}": {"url": f"http://127.0.0.1:{9000 + i}"} for i in range(PIECE + 50)}
    routes = [{"prefix": f"/r{i}/", "upstream": f"u{i % 7}"} for i in range(3 * PIECE + 1)]
    config = parse_config(yaml.safe_dump({"upstreams": upstreams, "routes": routes}))
    blob = dumps(config)
    assert loads_config(blob) == config
    assert await loads_config_gradually(blob) == config
    assert list(loads_config(blob).upstreams) == list(config.upstreams)  # in the same order


async def test_a_long_route_table_is_built_in_steps_and_swapped_once(
    session: ClientSession,
) -> None:
    """The data plane compiles a reload's routes a step at a time, serving requests on the
    routing in use between steps; the new routing is swapped in once, with the shares the
    flags hold at the end (a change during the steps is not lost)."""
    from abgate.config import parse_config
    from abgate.proxy.runtime import ROUTES_PER_STEP
    from abgate.state.flags import Flag

    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        padding = [{"prefix": f"/padding/{i}/", "upstream": "control"} for i in range(2600)]
        base = document(one, two)
        new = document(one, two, routes=[*padding, {"prefix": "/new/", "upstream": "treatment"}])
        async with embedded(parse_config(yaml.safe_dump(base))) as running:
            plane = running.plane
            assert plane.handler is not None
            old = plane.handler.routing
            reload = asyncio.create_task(plane.reload_in_steps(parse_config(yaml.safe_dump(new))))
            seen = []  # the routing in use at each pass of the loop the reload let through
            while not reload.done():
                seen.append(plane.handler.routing)
                if len(seen) == 2:  # mid-way: every user to control from now on
                    flag = plane.flags.get("exp")
                    plane.flags.apply(
                        Flag("exp", 0, flag.version + 1, flag.updated_at, "test", "mid-reload")
                    )
                await asyncio.sleep(0)
            assert await reload == []
            assert len(seen) >= 2600 // ROUTES_PER_STEP  # the loop ran between steps
            assert all(routing is old for routing in seen)  # the old one until the swap
            assert plane.handler.routing is not old
            async with session.get(f"{running.proxy_url}/new/x") as response:
                assert response.status == 200  # a route the old table did not have
                assert (await response.json())["path_qs"] == "/new/x"
            arms: Counter[str] = Counter()
            for user in range(40):
                headers = {"X-User-Id": f"user-{user}"}
                async with session.get(f"{running.proxy_url}/api/a", headers=headers) as answer:
                    assert answer.status == 200
                    arms[answer.headers["X-ABGate-Arm"]] += 1
            assert arms == {"control": 40}  # the change made during the steps holds


async def test_a_reload_refuses_a_control_api_beyond_loopback_without_a_token(
    tmp_path: Path, session: ClientSession
) -> None:
    """check-config and `abgate run` refuse it; a trial's reload accepted it (the next
    restart would then fail)."""
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        path = tmp_path / "abgate.yaml"
        path.write_text(yaml.safe_dump(document(one, two)))
        async with embedded(load_config(path), config_path=str(path)) as running:
            exposed = document(one, two)
            exposed["control"] = {"listen": "0.0.0.0:0"}
            path.write_text(yaml.safe_dump(exposed))
            async with session.post(f"{running.control_url}/api/config/reload") as response:
                answer = await response.json()
            assert answer["result"] == "failure", answer
            assert answer["problems"][0].startswith("control.listen: the control API would")
            assert running.reloader is not None
            assert running.reloader.config.control.listen.host == "127.0.0.1"


async def test_a_base_that_was_broken_or_missing_is_picked_up_once_fixed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A base file refused as a whole (not YAML, or not there yet) is named in the problem,
    so the watcher looks at it: fixing or creating it reloads, with no touch of the top."""
    from abgate.control import reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_INTERVAL", 0.02)
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        base, new, later = tmp_path / "base.yaml", tmp_path / "new.yaml", tmp_path / "later.yaml"
        path = tmp_path / "top.yaml"
        base.write_text(yaml.safe_dump(document(one, two)))
        path.write_text("extends: base.yaml\n")
        async with embedded(load_config(path), config_path=str(path)) as running:
            reloader = running.reloader
            assert reloader is not None

            async def after(change: Path, text: str) -> ReloadOutcome:
                seen = reloader.outcomes
                change.write_text(text)
                async with asyncio.timeout(60):  # a guard: the outcome is awaited
                    return await reloader.next_outcome(seen)

            new.write_text("extends: base.yaml\nproxy: {shutdown_timeout: [bad\n")
            outcome = await after(path, "extends: new.yaml\n")
            assert outcome.result == "failure"
            assert outcome.problems[0].startswith(f"<document> ({new} line "), outcome
            assert "invalid YAML" in outcome.problems[0]
            assert outcome.problems[0].endswith(f"; extended by {path.resolve()}")
            outcome = await after(new, "extends: base.yaml\nproxy: {shutdown_timeout: 5s}\n")
            assert (outcome.result, outcome.trigger) == ("success", "file change")
            assert reloader.config.proxy.shutdown_timeout == 5.0

            outcome = await after(path, "extends: later.yaml\n")
            assert outcome.result == "failure"
            assert outcome.problems[0].startswith(f"<document> ({later}): no such file"), outcome
            outcome = await after(later, "extends: base.yaml\nproxy: {shutdown_timeout: 7s}\n")
            assert (outcome.result, outcome.trigger) == ("success", "file change")
            assert reloader.config.proxy.shutdown_timeout == 7.0
            assert reloader.watched == (path, later, base)
