import numpy as np

from onegen.annotators import degrade


def _image():
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 255
    return img


def test_canny_finds_the_square_outline():
    edges, meta = degrade.canny(_image())
    assert edges.shape == (32, 32) and edges.dtype == np.uint8
    assert edges[8:24, 7:9].any() and not edges[12:20, 12:20].any() and meta["op"] == "canny"


def test_canny_keeps_an_edge_between_two_colours_of_one_grey():
    import cv2

    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = (255, 0, 0)
    img[:, 16:] = (0, 130, 0)  # 0.299 x 255 and 0.587 x 130: both grey 76
    assert cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).std() == 0
    edges, _ = degrade.canny(img)
    assert edges[4:28, 15:17].all(axis=0).any()  # a full vertical line where red meets green


def test_random_degradations_are_seeded_and_recorded():
    for fn in (degrade.blur, degrade.downscale, degrade.inpaint_mask):
        a, ma = fn(_image(), np.random.default_rng(5))
        b, mb = fn(_image(), np.random.default_rng(5))
        assert np.array_equal(a, b) and ma == mb and a.shape == (32, 32, 3)
        assert not np.array_equal(a, _image()), fn.__name__


def test_inpaint_box_is_blank_and_inside_the_image():
    out, meta = degrade.inpaint_mask(np.full((32, 32, 3), 7, np.uint8), np.random.default_rng(0))
    x1, y1, x2, y2 = meta["box"]
    assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
    assert (out[y1:y2, x1:x2] == 0).all() and (out == 0).sum() == 3 * (x2 - x1) * (y2 - y1)
