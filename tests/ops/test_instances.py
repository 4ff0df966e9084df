import numpy as np

from banacli.ops.instances import box_instance_masks


def test_masks_are_class_pixels_inside_the_box():
    lab = np.zeros((6, 8), np.uint8)
    lab[1:4, 1:4] = 1  # object of class 1
    lab[2, 6] = 2
    lab[0, 0] = 1  # class-1 pixel outside every box: nobody's
    lab[3, 3] = 255  # void is never in a mask
    m = box_instance_masks(lab, [[1, 1, 5, 5], [5, 1, 8, 4]], [1, 2])
    assert m.shape == (2, 6, 8) and m.dtype == bool
    want0 = (lab == 1)
    want0[0, 0] = False
    assert np.array_equal(m[0], want0)
    assert m[1].sum() == 1 and m[1][2, 6]


def test_overlapping_boxes_of_one_class_smallest_wins_ties_to_first():
    lab = np.ones((10, 10), np.uint8)
    big, small = [0, 0, 10, 10], [2, 2, 5, 5]
    m = box_instance_masks(lab, [big, small], [1, 1])
    assert m[1].sum() == 9 and m[1][2:5, 2:5].all()
    assert m[0].sum() == 100 - 9 and not m[0][2:5, 2:5].any()
    # equal boxes: the first listed owns the pixels
    m = box_instance_masks(lab, [small, small], [1, 1])
    assert m[0].sum() == 9 and m[1].sum() == 0
    # boxes of different classes never compete
    lab[2:5, 2:5] = 2
    m = box_instance_masks(lab, [big, small], [1, 2])
    assert m[0].sum() == 91 and m[1].sum() == 9


def test_no_boxes():
    assert box_instance_masks(np.zeros((4, 4), np.uint8), np.zeros((0, 4)), []).shape == (0, 4, 4)
