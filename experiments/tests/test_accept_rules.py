"""experiments/accept_rules.py: the fixed-sequence accept rule the README measures against the shipped one."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("accept_rules", Path(__file__).parents[1] / "accept_rules.py")
rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rules)


def test_fixed_sequence_begins_where_a_test_can_pass_and_stops_at_the_first_failure():
    top = np.linspace(1.0, 0.3, 2000)
    everyone = np.ones(2000, bool)
    right = np.ones(2000, bool)
    right[1] = False  # one error among the most confident few: a test begun there would fail and end it all
    assert rules.fixed_sequence(right, top, everyone, 0.97, 0.1) < 0.35
    right[np.arange(2000) % 5 == 0] = False  # 80% right from the top: no threshold reaches 97%
    assert rules.fixed_sequence(right, top, everyone, 0.97, 0.1) > 1
    right = np.ones(2000, bool)
    right[(top < 0.6)] = np.arange((top < 0.6).sum()) % 4 != 0  # 75% right below 0.6, every cell right above it
    chosen = rules.fixed_sequence(right, top, everyone, 0.97, 0.1)
    accepted = top >= chosen
    assert 0.5 <= chosen <= 0.6 and right[accepted].mean() >= 0.97  # a few of the worse cells, not many
    assert rules.fixed_sequence(right, top, everyone, 1.0, 0.1) > 1  # no count of cells shows zero risk
