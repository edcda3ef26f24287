"""Repository contracts: CI runs exactly the README's test commands, the default suite first."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMANDS = ['python -m pytest -m "not slow" -p no:cacheprovider', "python -m pytest -m slow -p no:cacheprovider"]


def test_ci_runs_the_readme_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert all(command in readme for command in TEST_COMMANDS)
    assert ci_lines[-2:] == TEST_COMMANDS
