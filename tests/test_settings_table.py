"""The README's configuration table is made from the settings' declarations, and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from abgate.config.settings_table import BEGIN, END, replace_table, settings_table

ROOT = Path(__file__).parent.parent


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert replace_table(readme) == readme, "stale: run `python scripts/settings_table.py`"


def test_every_declared_setting_has_a_row_with_its_default_and_help() -> None:
    table = settings_table()
    assert table.startswith(BEGIN)
    assert table.rstrip().endswith(END)
    assert "| `proxy.max_body_size` | `10MiB` | larger request bodies get 413 |" in table
    assert "| `upstreams.NAME.url` | required |" in table
    assert "| `upstreams.NAME.breaker.failure_statuses` | `[500, 502, 503, 504]` |" in table
    assert "| `proxy.random_seed` | none |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert all(not line.endswith("|  |") for line in rows)  # every row says what it does


def test_the_script_finds_a_stale_table_and_rewrites_it(tmp_path: Path) -> None:
    current = (ROOT / "README.md").read_text()
    stale = current.replace("| the data plane |", "| the old words |")
    assert stale != current
    copy = tmp_path / "README.md"
    copy.write_text(stale)
    script = [sys.executable, str(ROOT / "scripts" / "settings_table.py"), "--readme", str(copy)]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 1
    assert "stale" in check.stdout
    assert copy.read_text() == stale  # --check writes nothing
    subprocess.run(script, capture_output=True, text=True, check=True)
    assert copy.read_text() == current
