"""The README tells the truth about settings and commands."""

from __future__ import annotations

from pathlib import Path

from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        assert f"`TC_{name.upper()}`" in README, (
            f"TC_{name.upper()} missing from the README settings table"
        )


def test_the_two_commands_exist():
    for script in ("scripts/serve.sh", "scripts/test.sh"):
        assert f"bash {script}" in README and (ROOT / script).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
