"""The procedural shapes dataset: deterministic per seed, captions that match the pixels, bad input rejected."""

import numpy as np
import pytest

from vidattn.data.shapes import COLORS, DIRECTIONS, SHAPES, ShapesDataset, make_caption, render_video, shape_mask


def _centroid(frame: np.ndarray, background) -> tuple[float, float]:
    """Naive reference: mean (x, y) of pixels that differ from the background, by a Python loop."""
    xs, ys = [], []
    for y in range(frame.shape[0]):
        for x in range(frame.shape[1]):
            if any(abs(float(frame[y, x, c]) - background[c]) > 0.5 for c in range(3)):
                xs.append(x + 0.5)
                ys.append(y + 0.5)
    return float(np.mean(xs)), float(np.mean(ys))


def test_same_seed_same_videos_other_seed_differs():
    a, b, c = (ShapesDataset(6, frames=5, height=24, width=32, seed=s) for s in (3, 3, 4))
    for i in range(6):
        assert a[i].caption == b[i].caption
        np.testing.assert_array_equal(a[i].video, b[i].video)
    assert any(a[i].caption != c[i].caption or not np.array_equal(a[i].video, c[i].video) for i in range(6))


def test_any_frame_count_and_size():
    for frames, height, width in ((1, 16, 16), (9, 24, 40), (33, 48, 32)):
        sample = ShapesDataset(2, frames=frames, height=height, width=width, seed=0)[1]
        assert sample.video.shape == (frames, height, width, 3)
        assert sample.video.dtype == np.float32 and sample.video.min() >= 0 and sample.video.max() <= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_captions_match_content(seed):
    """The caption's colour is the only non-background colour and the centroid moves the named way."""
    data = ShapesDataset(12, frames=9, height=40, width=48, seed=seed, backgrounds=("black", "white"))
    for i in range(len(data)):
        s = data[i]
        words = s.caption.split()
        assert words[1] == s.color and words[2] == s.shape and words[4] == s.direction and words[-2] == s.background
        bg = COLORS[s.background]
        pixels = s.video.reshape(-1, 3)
        others = {tuple(p) for p in pixels.tolist()} - {bg}
        assert others == {COLORS[s.color]}
        x0, y0 = _centroid(s.video[0], bg)
        x1, y1 = _centroid(s.video[-1], bg)
        dx, dy = DIRECTIONS[s.direction]
        assert np.sign(round(x1 - x0)) == dx and np.sign(round(y1 - y0)) == dy
        # the shape stays inside the frame: it never touches the border
        assert not (s.video[:, [0, -1]] != bg).any() and not (s.video[:, :, [0, -1]] != bg).any()


def test_shapes_differ_and_have_similar_area():
    areas = {s: shape_mask(s, 20, 20, 8, 40, 40).sum() for s in SHAPES}
    assert len({shape_mask(s, 20, 20, 8, 40, 40).tobytes() for s in SHAPES}) == 3
    assert max(areas.values()) < 2 * min(areas.values())
    disk = shape_mask("circle", 20, 20, 8, 40, 40)
    y, x = np.nonzero(disk)
    assert np.all((x + 0.5 - 20) ** 2 + (y + 0.5 - 20) ** 2 <= 64)


def test_draws_cover_the_vocabulary():
    data = ShapesDataset(200, frames=1, height=16, width=16, seed=0)
    draws = [data.attributes(i) for i in range(len(data))]
    assert {d["color"] for d in draws} == {"red", "green", "blue", "yellow", "white"}
    assert {d["shape"] for d in draws} == set(SHAPES)
    assert {d["direction"] for d in draws} == set(DIRECTIONS)


def test_caption_words_are_in_the_default_tokenizer():
    from vidattn.pipelines.default_model import WORDS

    data = ShapesDataset(50, frames=1, height=16, width=16, seed=0, backgrounds=("black", "white"))
    for i in range(len(data)):
        assert set(data[i].caption.split()) <= set(WORDS)


def test_bad_input():
    with pytest.raises(ValueError, match="color must be one of"):
        make_caption("purple", "circle", "left")
    with pytest.raises(ValueError, match="direction must be one of"):
        render_video("red", "circle", "sideways")
    with pytest.raises(ValueError, match="shape must be one of"):
        render_video("red", "hexagon", "left")
    with pytest.raises(ValueError, match="color must differ from background"):
        render_video("white", "circle", "left", "white")
    with pytest.raises(ValueError, match="backgrounds must be one of"):
        ShapesDataset(3, backgrounds=("pink",))
    with pytest.raises(ValueError, match="num_samples"):
        ShapesDataset(0)
    with pytest.raises(ValueError, match="radius"):
        ShapesDataset(3, radius=(0.3, 0.3), travel=0.5)
    with pytest.raises(IndexError):
        ShapesDataset(3)[3]


def test_position_jitter_zero_gives_centred_starts():
    data = ShapesDataset(40, frames=2, height=32, width=48, seed=0, position_jitter=0.0)
    starts = {}
    for i in range(len(data)):
        a = data.attributes(i)
        starts.setdefault(a["direction"], set()).add(tuple(round(v, 1) for v in a["start"]))
        assert (a["start"][1] if a["direction"] in ("left", "right") else a["start"][0]) == pytest.approx(0.5)
    assert all(len(s) <= 2 for s in starts.values())  # only the radius draw moves the start
    with pytest.raises(ValueError, match="position_jitter"):
        ShapesDataset(3, position_jitter=1.5)
