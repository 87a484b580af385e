"""The README tells the truth about settings and commands."""

from __future__ import annotations

import re
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


def test_the_python_example_runs_against_a_live_server(hf_server, capsys):
    """The README's client example, as written, against a real server: the ids it sends are the
    tokenization of the texts, and it prints one advantage per response token."""
    (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    code = block.replace("http://127.0.0.1:8000", hf_server.url)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    tc, wrong = namespace["tc"], namespace["wrong"]
    rollout = namespace["result"].groups[0][1]
    assert len(rollout.advantages) == len(tc.tokenize(wrong)) > 0
    assert capsys.readouterr().out.strip().startswith("[")
