"""Box accuracy split by how much another box covers each box (banacli.engine.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest

from banacli.engine.evaluate import COVERED, covered_share


def test_covered_share_on_hand_worked_boxes():
    boxes = [
        [0, 0, 10, 10],    # area 100; box 1 covers x 5..10, y 0..10 = 50 -> 0.5
        [5, 0, 25, 10],    # area 200; box 0 covers 50 -> 0.25 (box 2 covers 0)
        [40, 40, 50, 50],  # alone -> 0
        [41, 41, 43, 43],  # inside box 2: area 4, covered fully -> 1.0; box 2 gets 4 / 100 from it
    ]
    share = covered_share(boxes)
    assert share == pytest.approx([0.5, 0.25, 0.04, 1.0])
    assert list(share >= COVERED) == [True, False, False, True]


def test_a_single_box_and_no_box_are_not_covered():
    assert covered_share([[1, 2, 3, 4]]).tolist() == [0.0]
    assert covered_share(np.zeros((0, 4))).shape == (0,)
