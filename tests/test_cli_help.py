"""`compress-cache --help` lists every sub-command without importing any of them (each pulls in torch)."""
import importlib
import subprocess
import sys
from pathlib import Path

from stages.cli import _COMMANDS

REPO = Path(__file__).resolve().parent.parent


def test_each_listed_summary_is_its_commands_own_first_sentence():
    for name, (module, summary) in _COMMANDS.items():
        command = importlib.import_module(f"stages.cli.{module}").command
        assert command.get_short_help_str(limit=1000) == summary, name


def test_top_level_help_lists_the_commands_without_importing_torch():
    probe = ("import sys; from click.testing import CliRunner; from stages.cli import main; "
             "r = CliRunner().invoke(main, ['--help']); print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         timeout=120).stdout
    assert out.startswith("0 False"), out[:200]
    assert all(f"  {name} " in out for name in _COMMANDS)
