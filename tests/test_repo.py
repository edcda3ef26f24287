"""Repository contracts: CI runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = 'python -m pytest -m "not slow" -p no:cacheprovider'


def test_ci_runs_the_readme_test_command() -> None:
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()[-1]
