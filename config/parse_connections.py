"""Configuration schema: how abgate reaches its stores. Redis as one URL or through Sentinel,
with an ACL user, a password and TLS; secrets as references to an environment variable or a
file, never as values in the YAML (a URL may still carry one: it is masked wherever shown)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from abgate.config.export import mask_url
from abgate.config.fields import Reader, check_env_name, check_file_path
from abgate.config.model import RedisSettings, SecretRef, SentinelSettings, TlsSettings
from abgate.config.yaml_lines import KeyPath

_USER = re.compile(r"^[^\s]{1,128}$")
_SCHEMES = ("redis://", "rediss://", "unix://")
_REDIS_KEYS = {
    "url",
    "sentinel",
    "db",
    "username",
    "password_env",
    "password_file",
    "tls",
    "wait_replicas",
    "wait_timeout",
}
_SENTINEL_KEYS = {"addresses", "service", "username", "password_env", "password_file", "tls"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "check_hostname"}


def _url_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


class ConnectionSchema:
    r: Reader

    def _redis_url(self, value: Any, path: KeyPath) -> str | None:
        if not isinstance(value, str) or not value.startswith(_SCHEMES):
            shown = mask_url(value) if isinstance(value, str) else value
            self.r.problem(path, f"expected a redis:// URL, got {shown!r}")
            return None
        return value

    def _redis(self, value: Any, path: KeyPath) -> tuple[RedisSettings | None, bool]:
        """`flags.redis`: (settings, valid). Exactly one of url and sentinel."""
        section = self.r.mapping(value, path, _REDIS_KEYS)
        if section is None:
            return None, False
        before = len(self.r.problems)
        url = sentinel = None
        if ("url" in section) == ("sentinel" in section):
            self.r.problem(path, "needs exactly one of url (one server) or sentinel")
        elif "url" in section:
            url = self._redis_url(section["url"], (*path, "url"))
        else:
            sentinel = self._sentinel(section["sentinel"], (*path, "sentinel"))
        db = self.r.integer(section.get("db", 0), (*path, "db"), low=0, high=15)
        if "db" in section and "url" in section:
            self.r.problem((*path, "db"), "with url, the database is the URL's path (/0)")
        username = self._username(section, path)
        password = self._secret(section, path)
        if url is not None and password is not None and _url_password(url):
            self.r.problem(path, "the URL holds a password already: give it in one place")
        tls = self._tls(section.get("tls"), (*path, "tls"))
        if tls is not None and url is not None and not url.startswith("rediss://"):
            self.r.problem((*path, "tls"), "TLS needs a rediss:// URL")
        replicas = self.r.integer(
            section.get("wait_replicas", 1 if sentinel is not None else 0),
            (*path, "wait_replicas"),
            low=0,
            high=16,
        )
        wait = self.r.duration(
            section.get("wait_timeout", "500ms"), (*path, "wait_timeout"), high=60
        )
        if len(self.r.problems) > before or db is None or replicas is None or wait is None:
            return None, False
        if sentinel is not None and tls is not None and "tls" not in (section["sentinel"] or {}):
            # Sentinels of a TLS deployment speak TLS too, unless told otherwise.
            sentinel = SentinelSettings(
                sentinel.addresses, sentinel.service, sentinel.username, sentinel.password, True
            )
        settings = RedisSettings(
            url=url,
            sentinel=sentinel,
            db=db,
            username=username,
            password=password,
            tls=tls,
            wait_replicas=replicas,
            wait_timeout=wait,
        )
        return settings, True

    def _sentinel(self, value: Any, path: KeyPath) -> SentinelSettings | None:
        section = self.r.mapping(value, path, _SENTINEL_KEYS)
        if section is None:
            return None
        before = len(self.r.problems)
        raw = section.get("addresses")
        addresses: list[tuple[str, int]] = []
        if not isinstance(raw, list) or not raw:
            self.r.problem((*path, "addresses"), "expected a list of 'host:port' sentinels")
        else:
            for index, item in enumerate(raw):
                listen = self.r.listen(item, (*path, "addresses", index))
                if listen is not None and listen.port == 0:
                    self.r.problem((*path, "addresses", index), "a sentinel needs a port")
                elif listen is not None:
                    addresses.append((listen.host, listen.port))
        service = self.r.name(section.get("service"), (*path, "service"))
        username = self._username(section, path)
        password = self._secret(section, path)
        tls = self.r.boolean(section.get("tls", False), (*path, "tls"))
        if len(self.r.problems) > before or service is None or tls is None:
            return None
        return SentinelSettings(tuple(addresses), service, username, password, tls)

    def _username(self, section: dict[str, Any], path: KeyPath) -> str | None:
        if section.get("username") is None:
            return None
        return self.r.string(
            section["username"], (*path, "username"), pattern=_USER, what="an ACL user name"
        )

    def _secret(self, section: dict[str, Any], path: KeyPath) -> SecretRef | None:
        """`password_env: NAME` or `password_file: PATH` (not both); None: no password."""
        env, file = section.get("password_env"), section.get("password_file")
        if env is not None and file is not None:
            self.r.problem(path, "password_env and password_file: give one of them")
            return None
        if env is not None:
            name = self.r.checked((*path, "password_env"), check_env_name, env)
            return SecretRef(env=name) if name else None
        if file is not None:
            name = self.r.checked((*path, "password_file"), check_file_path, file)
            return SecretRef(file=name) if name else None
        return None

    def _tls(self, value: Any, path: KeyPath) -> TlsSettings | None:
        if value is None:
            return None
        section = self.r.mapping(value, path, _TLS_KEYS)
        if section is None:
            return None
        files = {}
        for key in ("ca_file", "cert_file", "key_file"):
            if section.get(key) is not None:
                files[key] = self.r.string(section[key], (*path, key), what="a file path")
        if ("cert_file" in files) != ("key_file" in files):
            self.r.problem(path, "cert_file and key_file go together (a client certificate)")
        check = self.r.boolean(section.get("check_hostname", True), (*path, "check_hostname"))
        return TlsSettings(
            files.get("ca_file"),
            files.get("cert_file"),
            files.get("key_file"),
            bool(check),
        )
