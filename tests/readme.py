"""What the README promises, read from the README itself, for tests that hold code to it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def error_codes() -> dict[str, int]:
    """The control API's error codes and the iscsiadm exit code of each (README table)."""
    text = README.read_text().split("Error codes and the iscsiadm exit code each maps to:")[1]
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", text.split("\n\n")[1], re.MULTILINE)
    return {code: int(exit_code) for code, exit_code in rows}
