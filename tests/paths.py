"""Where the repository is, for tests that run its files (README, examples, scripts)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
