"""The newcomer path: the README's install and test commands are what CI runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_ci_runs_the_readme_test_commands():
    tests = _commands("Tests")
    assert tests == ['pip install -e ".[test]"', "python -m pytest -q"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in tests:
        assert f"python -m {command}" in ci or command in ci, command


def test_readme_install_command_names_a_real_extra():
    install = _commands("Install")
    assert install == ['pip install -e ".[data]"']
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^data = \[", pyproject, re.M)
    assert re.search(r'^test = \["itop\[data\]"', pyproject, re.M)  # the tests have what the library uses


def test_only_rank_zero_prints_under_torchrun():
    env = {"PATH": "", "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run([sys.executable, "-m", "itop", "list", "methods"], capture_output=True, text=True,
                           env={**env, "RANK": "1"}, timeout=120)
    loud = subprocess.run([sys.executable, "-m", "itop", "list", "methods"], capture_output=True, text=True,
                          env={**env, "RANK": "0"}, timeout=120)
    assert quiet.returncode == loud.returncode == 0
    assert quiet.stdout == "" and "rigl-itop" in loud.stdout
