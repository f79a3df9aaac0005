import numpy as np
import pytest

from evals.condition.metrics import Person, correct_keypoints, depth_abs_rel, edge_emse, greedy_match, pose_pck


def test_edge_emse_by_hand():
    ref = np.zeros((4, 4), np.uint8)
    gen = np.zeros((4, 4), np.uint8)
    ref[0, :] = 255  # 4 reference edge pixels
    gen[0, :2] = 255  # 2 of them found
    gen[3, 3] = 255  # 1 spurious
    assert edge_emse(gen, ref) == pytest.approx(3 / 5)  # union of 5 pixels, 3 disagree by 1
    assert edge_emse(ref, ref) == 0.0
    assert edge_emse(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0  # no edges on either side: agreement
    soft_ref, soft_gen = np.zeros((2, 2)), np.zeros((2, 2))
    soft_ref[0, 0], soft_gen[0, 0], soft_gen[1, 1] = 0.5, 0.3, 0.2
    assert edge_emse(soft_gen, soft_ref) == pytest.approx((0.2**2 + 0.2**2) / 2)  # [0, 1] floats as is


def test_edge_emse_accepts_edge_pictures_and_refuses_mismatches():
    e = np.zeros((5, 6), np.uint8)
    e[2, 1:5] = 255
    picture = np.repeat(e[..., None], 3, axis=2)
    assert edge_emse(picture, e) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        edge_emse(e, e[:4])


def test_depth_abs_rel_is_affine_invariant_and_hand_computed():
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 5, (8, 8))
    assert depth_abs_rel(3 * ref + 2, ref) == pytest.approx(0.0, abs=1e-12)
    ref = np.array([[1.0, 2.0], [4.0, 4.0]])
    gen = np.array([[1.0, 1.0], [1.0, 1.0]])  # constant: the fit is the reference's mean, 2.75
    expected = np.mean(np.abs(2.75 - ref) / ref)
    assert depth_abs_rel(gen, ref) == pytest.approx(expected)


def test_depth_abs_rel_leaves_out_zero_disparity():
    ref = np.array([[0.0, 1.0], [2.0, 4.0]])  # 0: sky, no depth there
    gen = np.array([[9.0, 1.0], [2.0, 4.0]])
    assert depth_abs_rel(gen, ref) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        depth_abs_rel(gen, ref[:1])


def _person(points, visible=None, box=None):
    points = np.asarray(points, float)
    return Person(points, np.ones(len(points), bool) if visible is None else np.asarray(visible, bool), box)


def test_pck_threshold_is_a_tenth_of_the_reference_box():
    ref = _person([[0, 0], [10, 0], [0, 100]], box=[0, 0, 50, 100])  # max(h, w) = 100 -> 10 px
    gen = _person([[9.9, 0], [10, 10.1], [0, 100]])
    assert correct_keypoints(ref, gen) == 2  # 9.9 px in, 10.1 px out, exact in
    no_box = _person([[0, 0], [10, 0], [0, 100]])  # extent of the keypoints: 100 x 10 -> 10 px
    assert correct_keypoints(no_box, gen) == 2
    hidden = _person([[0, 0], [10, 0], [0, 100]], visible=[True, True, False])
    assert correct_keypoints(ref, hidden) == 2  # the keypoint the generated person lacks is wrong


def test_greedy_matching_takes_the_best_pairs_first():
    pck = np.array([[0.9, 0.8], [0.85, 0.1]])
    # Greedy takes (0,0)=0.9, then (1,1)=0.1, although (0,1)+(1,0) would sum higher: UniCon's rule.
    assert greedy_match(pck) == [(0, 0), (1, 1)]
    assert sorted(greedy_match(np.array([[0.2], [0.7], [0.5]]))) == [(1, 0)]
    assert greedy_match(np.zeros((0, 3))) == []


def test_pose_pck_counts_matched_people_and_all_of_them():
    a = _person([[0, 0], [0, 100], [0, 0]], visible=[True, True, False], box=[0, 0, 20, 100])  # 2 visible
    b = _person([[500, 0], [500, 100], [500, 50]], box=[480, 0, 520, 100])  # 3 visible
    gen_b = _person([[501, 1], [500, 100], [400, 50]])  # b's pose, listed first: 2 of 3 right
    gen_a = _person([[0, 0], [0, 100], [0, 0]], visible=[True, True, False])  # a's pose: 2 of 2
    # (correct, visible keypoints of the matched reference people, of all reference people)
    assert pose_pck([a, b], [gen_b, gen_a]) == (4, 5, 5)  # the order of generated people does not matter
    assert pose_pck([a, b], [gen_b]) == (2, 3, 5)  # a is unmatched: out of UniCon's PCK, wrong in the strict one
    assert pose_pck([a, b], []) == (0, 0, 5)
    assert pose_pck([], [gen_b]) == (0, 0, 0)  # nobody in the real image: no PCK for this image
