"""Early stopping: the median rule and ASHA stop trials that are behind, and only those."""

from __future__ import annotations

from bnlenet.sweeps.spec import StoppingRule
from bnlenet.sweeps.stopping import asha_stop, median_stop, rungs, should_stop

GOOD = [0.80, 0.84, 0.86, 0.87]
FAIR = [0.78, 0.82, 0.84, 0.85]
CHANCE = [0.10, 0.10, 0.10, 0.10]


def test_median_stops_a_trial_clearly_behind():
    reason = median_stop(CHANCE[:1], [GOOD, FAIR], min_epochs=1)
    assert reason is not None and "median" in reason


def test_median_lets_a_trial_that_is_ahead_go_on():
    assert median_stop(GOOD[:2], [FAIR, CHANCE, FAIR]) is None
    assert median_stop(GOOD[:1], [FAIR, CHANCE]) is None


def test_median_compares_with_running_averages_at_the_same_epoch():
    # Others average 0.5 over their first two epochs (0.2 then 0.8); 0.6 is ahead of that,
    # though behind their second epoch alone.
    others = [[0.2, 0.8, 0.9], [0.2, 0.8, 0.9]]
    assert median_stop([0.5, 0.6], others) is None
    assert median_stop([0.4, 0.45], others) is not None


def test_median_waits_for_min_epochs_and_for_others():
    assert median_stop(CHANCE[:1], [GOOD], min_epochs=2) is None
    assert median_stop(CHANCE[:2], [GOOD], min_epochs=2) is not None
    assert median_stop(CHANCE[:3], [GOOD[:2]]) is None  # nobody else reached epoch 3


def test_asha_rungs():
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(2, 2, 10) == [2, 4, 8]


def test_asha_keeps_the_top_fraction_at_a_rung():
    others = [[0.5], [0.6], [0.7], [0.8], [0.9]]
    assert asha_stop([0.65], others, reduction_factor=3) is not None
    assert asha_stop([0.85], others, reduction_factor=3) is None  # cutoff is the 2/3 quantile, 0.7667


def test_asha_only_decides_at_rungs_and_not_alone():
    others = [[0.9, 0.9, 0.9], [0.9, 0.9, 0.9]]
    assert asha_stop([0.1, 0.1], others, min_epochs=1, reduction_factor=3) is None  # epoch 2 is no rung
    assert asha_stop([0.1, 0.1, 0.1], others, min_epochs=1, reduction_factor=3) is not None
    assert asha_stop([0.1], [], min_epochs=1) is None


def test_should_stop_dispatches_on_the_rule():
    assert should_stop(StoppingRule("median", 1), CHANCE[:1], [GOOD]) is not None
    assert should_stop(StoppingRule("asha", 1, 2), GOOD[:1], [CHANCE]) is None
    assert should_stop(StoppingRule("asha", 1, 2), CHANCE[:1], [GOOD]) is not None
