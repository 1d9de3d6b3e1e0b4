"""The experiments' tests share the product's fixtures (tiny models and datasets). Run them with
``pytest experiments``; they are not part of the default test run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import *  # noqa: E402,F401,F403
