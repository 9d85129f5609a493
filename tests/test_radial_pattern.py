"""Radial block plan: against a naive per-token / per-tile re-derivation, and its documented properties."""

import math

import pytest
import torch

from vidattn.layout import VideoLayout
from vidattn.patterns.radial import RadialPattern, radial_allows, radial_plan


def naive_pair_allows(i, j, s, decay, block, sink, decimation=128):
    """The official rule re-derived from the spec, one frame pair at a time, as an s x s boolean matrix."""
    d = abs(i - j)
    if d <= 1 or (sink and j == 0):
        return None  # the full pair
    ref_len = 2 ** math.floor(math.log2(s) + 1)
    group = 2 ** math.floor(math.log2(d) + 1)
    length = ref_len / group
    if length < decimation and d % int(decimation / length) != 0:
        return torch.zeros(s, s, dtype=torch.bool)
    width = max(length * decay, block)
    rows = torch.arange(s).view(-1, 1)
    cols = torch.arange(s).view(1, -1)
    return (cols - rows).abs() <= width


def naive_radial_tiles(layout, decay, block, sink, decimation=128):
    """Per frame pair: place its token mask in the full canvas, keep tiles by the strict rule, OR them."""
    n, s, start = layout.total_tokens, layout.tokens_per_frame, layout.video_start
    nb = -(-n // block)
    tiles = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(layout.frames):
        for j in range(layout.frames):
            canvas = torch.zeros(nb * block, nb * block, dtype=torch.bool)
            r0, c0 = start + i * s, start + j * s
            allowed = naive_pair_allows(i, j, s, decay, block, sink, decimation)
            canvas[r0 : r0 + s, c0 : c0 + s] = True if allowed is None else allowed
            for qb in range(nb):
                for kb in range(nb):
                    tile = canvas[qb * block : (qb + 1) * block, kb * block : (kb + 1) * block]
                    rows_set = tile.sum(0)
                    nonzero = (rows_set > 0).sum().item()
                    dense_cols = (rows_set / block > 1 / 3).sum().item()
                    if allowed is None and nonzero:  # full pairs keep every tile they touch
                        tiles[qb, kb] = True
                    if nonzero and dense_cols / nonzero > 0.6:
                        tiles[qb, kb] = True
    text_tokens = torch.zeros(nb * block, dtype=torch.bool)
    if layout.text:
        if layout.text_position == "before":
            text_tokens[: layout.text] = True
        else:
            text_tokens[layout.video_tokens : n] = True
    text_tile = text_tokens.view(nb, block).any(-1)
    return tiles | text_tile.view(-1, 1) | text_tile.view(1, -1)


GEOMETRIES = [
    (VideoLayout(6, 4, 8), 0.5, 16, True, 16),  # aligned: 32 tokens per frame, 2 tiles
    (VideoLayout(7, 5, 7), 0.3, 16, True, 16),  # unaligned frames (35 tokens)
    (VideoLayout(9, 3, 5, text=9, text_position="before"), 1.0, 8, False, 8),  # CogVideoX-like
    (VideoLayout(8, 4, 6, text=11, text_position="after"), 0.95, 16, False, 32),  # HunyuanVideo-like
]


@pytest.mark.parametrize("layout,decay,block,sink,decimation", GEOMETRIES)
def test_plan_matches_naive_reference(layout, decay, block, sink, decimation):
    plan = radial_plan(layout, RadialPattern(decay=decay, block_size=block, sink=sink, decimation=decimation))
    expected = naive_radial_tiles(layout, decay, block, sink, decimation)
    assert torch.equal(plan.tiles[0, 0], expected)


@pytest.mark.parametrize("layout,decay,block,sink,decimation", GEOMETRIES[:2])
def test_plan_properties(layout, decay, block, sink, decimation):
    tiles = radial_plan(layout, RadialPattern(decay=decay, block_size=block, sink=sink, decimation=decimation)).tiles[0, 0]
    n, s = layout.total_tokens, layout.tokens_per_frame
    idx = torch.arange(n)
    token = tiles[idx.view(-1, 1) // block, idx.view(1, -1) // block]
    frame = idx // s
    near = (frame.view(-1, 1) - frame.view(1, -1)).abs() <= 1
    assert token[near].all(), "|i - j| <= 1 must be dense"
    if sink:
        assert token[:, frame == 0].all(), "the sink frame must be dense"
    if n % block == 0:
        # symmetric in |i - j| (mirror of the plan equals its transpose when the sink is off)
        nosink = radial_plan(layout, RadialPattern(decay=decay, block_size=block, sink=False, decimation=decimation)).tiles[0, 0]
        assert torch.equal(nosink, nosink.T)


RAGGED = GEOMETRIES[1:3] + [
    (VideoLayout(13, 3, 5), 1.0, 16, True, 128),  # 15 tokens per frame, far pairs decimated
    (VideoLayout(20, 5, 7), 0.7, 16, False, 128),
]


def token_mask_from_radial_allows(layout, pattern):
    """The package's per-token rule, frame pair by frame pair, on the (video) token canvas; text rows/cols set."""
    n, s, start = layout.total_tokens, layout.tokens_per_frame, layout.video_start
    mask = torch.zeros(n, n, dtype=torch.bool)
    row, col = torch.arange(s).view(-1, 1), torch.arange(s).view(1, -1)
    for i in range(layout.frames):
        for j in range(layout.frames):
            allowed = radial_allows(i, j, row, col, s, pattern)
            expected = naive_pair_allows(i, j, s, pattern.decay, pattern.block_size, pattern.sink, pattern.decimation)
            assert torch.equal(allowed, torch.ones(s, s, dtype=torch.bool) if expected is None else expected), (i, j)
            mask[start + i * s : start + (i + 1) * s, start + j * s : start + (j + 1) * s] = allowed
    text = torch.ones(n, dtype=torch.bool)
    text[start : start + layout.video_tokens] = False
    return mask | text.view(-1, 1) | text.view(1, -1)


@pytest.mark.parametrize("layout,decay,block,sink,decimation", RAGGED)
def test_plan_against_the_per_token_rule(layout, decay, block, sink, decimation):
    """radial_allows equals the spec's rule; the plan keeps every tile of a full frame pair and no tile without an
    allowed pair. Band tiles may be dropped: the strict tile rule is lossy by design (which ones: the test above)."""
    pattern = RadialPattern(decay=decay, block_size=block, sink=sink, decimation=decimation)
    mask = token_mask_from_radial_allows(layout, pattern)
    n, s, start = layout.total_tokens, layout.tokens_per_frame, layout.video_start
    tiles = radial_plan(layout, pattern).tiles[0, 0]
    idx = torch.arange(n)
    kept = tiles[idx.view(-1, 1) // block, idx.view(1, -1) // block]
    frame = (idx - start).div(s, rounding_mode="floor")
    video = (idx >= start) & (idx < start + layout.video_tokens)
    full_pair = ((frame.view(-1, 1) - frame.view(1, -1)).abs() <= 1) | (sink & (frame.view(1, -1) == 0))
    assert kept[full_pair & video.view(-1, 1) & video.view(1, -1)].all(), "a full frame pair lost a tile"
    nb = -(-n // block)
    padded = torch.zeros(nb * block, nb * block, dtype=torch.bool)
    padded[:n, :n] = mask
    touched = padded.view(nb, block, nb, block).any(3).any(1)
    assert not (tiles & ~touched).any(), "a kept tile holds no allowed token pair"
    assert touched.sum() >= tiles.sum() > 0


def test_sparsity_grows_with_frames():
    pattern = RadialPattern(decay=0.2)
    values = [radial_plan(VideoLayout(f, 48, 80), pattern).sparsity for f in (9, 18, 36)]
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize(
    "frames,decay,sink,expected",
    [(18, 0.2, True, 0.71), (18, 1.0, True, 0.57), (30, 0.95, False, 0.73)],
)
def test_sparsity_matches_spec_figures(frames, decay, sink, expected):
    """768x1280 latents are 48x80 = 3840 tokens per frame (spec section 1.2)."""
    plan = radial_plan(VideoLayout(frames, 48, 80), RadialPattern(decay=decay, sink=sink))
    assert abs(plan.sparsity - expected) <= 0.02


@pytest.mark.parametrize(
    "kwargs,match",
    [({"decay": 0.0}, "decay"), ({"decay": -1}, "decay"), ({"block_size": 100}, "power of two"), ({"block_size": 0}, "power of two")],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RadialPattern(**kwargs)
