"""Rewrite README.md's configuration table from the settings' declarations.

    python scripts/settings_table.py          # README.md rewritten in place
    python scripts/settings_table.py --check  # exit 1 when README.md is stale

The table is `abgate.config.settings_table`'s; tests/test_settings_table.py checks it too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from abgate.config.settings_table import replace_table

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument("--readme", type=Path, default=README, help="another copy to check")
    args = parser.parse_args()
    readme: Path = args.readme
    text = readme.read_text()
    current = replace_table(text)
    if current == text:
        return 0
    if args.check:
        print(f"{readme}: the configuration table is stale: run scripts/settings_table.py")
        return 1
    readme.write_text(current)
    print(f"{readme}: configuration table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
