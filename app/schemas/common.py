"""What several schema families share: the example id and the texts about a run's accuracy."""

from __future__ import annotations

EXAMPLE_ID = "3f2b8c1d9a7e4f60b1c2d3e4f5a6b7c8"

HISTORY_DESCRIPTION = (
    "one entry per finished epoch; its test_acc uses the BN moving averages as that epoch ended "
    "(before any precise BN), so it is not the stored model's accuracy: see final_test_acc"
)
FINAL_TEST_ACC_DESCRIPTION = (
    "test accuracy of the model as stored and served (with precise BN when it is on); "
    "null until the job succeeds"
)
