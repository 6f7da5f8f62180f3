"""KanjiVG parsing and rendering: exact path geometry, determinism, legibility."""
import numpy as np
import pytest

from ntk_bridge.datasets import render
from ntk_bridge.datasets.episodes import sample_episodes
from ntk_bridge.fewshot.evaluate import nearest_neighbour_accuracies


def test_parse_path_cubic_endpoints_and_midpoint():
    # M then one absolute cubic: B(1/2) = (p0 + 3 p1 + 3 p2 + p3) / 8.
    points = render.parse_path("M0,0C10,0,20,10,30,10", points_per_curve=2)
    np.testing.assert_allclose(points, [[0, 0], [15, 5], [30, 10]])


def test_parse_path_relative_and_smooth_commands():
    # relative c from (10,10) ends at (20,20); s reflects the previous control (15,20) about (20,20)
    # to (25,20) and its own numbers are relative to (20,20).
    points = render.parse_path("M10,10c0,5,5,10,10,10s10,0,10-10", points_per_curve=1)
    np.testing.assert_allclose(points, [[10, 10], [20, 20], [30, 10]])
    smooth_mid = render.parse_path("M10,10c0,5,5,10,10,10s10,0,10-10", points_per_curve=2)[3]
    np.testing.assert_allclose(smooth_mid, (np.array([20, 20]) + 3 * np.array([25, 20]) + 3 * np.array([30, 20]) + np.array([30, 10])) / 8)


def test_parse_path_lines_and_numbers_without_separators():
    points = render.parse_path("M1.5.5L2-1h3v2z")
    np.testing.assert_allclose(points, [[1.5, 0.5], [2, -1], [5, -1], [5, 1], [1.5, 0.5]])


def test_every_stroke_of_a_character_is_inside_the_box():
    strokes = render.load_strokes(0x53E3)  # 口: 3 strokes
    assert len(strokes) == 3
    for stroke in strokes:
        assert stroke.ndim == 2 and stroke.shape[1] == 2 and len(stroke) > 2
        assert np.all((stroke >= 0) & (stroke <= render.BOX))


def test_rendering_is_deterministic_per_seed_and_varies_across_seeds_and_samples():
    a = render.render_character(0x5DE5, 6, seed=3)
    b = render.render_character(0x5DE5, 6, seed=3)
    c = render.render_character(0x5DE5, 6, seed=4)
    assert a.dtype == np.uint8 and a.shape == (6, 28, 28)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({im.tobytes() for im in a}) == 6  # every sample is a different handwriting
    ink = (a > 0).mean(axis=(1, 2))
    assert np.all((ink > 0.05) & (ink < 0.6)), ink


def test_drop_near_duplicates_removes_size_twins_and_keeps_distinct_shapes():
    # ぁ/あ differ only in size, へ/ヘ not at all; 口, ロ and 工 are distinct shapes.
    kept = render.drop_near_duplicates([0x3041, 0x3042, 0x3078, 0x30D8, 0x53E3, 0x30ED, 0x5DE5])
    assert kept == [0x3041, 0x3078, 0x53E3, 0x30ED, 0x5DE5]


@pytest.mark.slow
def test_rendered_characters_are_legible_to_nearest_neighbour():
    """Raw-pixel 1-NN on 5-way 1-shot tasks over 20 characters: chance is 20%; Omniglot's pixel baseline
    is about 42% (Vinyals et al. 2016) and the full kanji set gives about 40%. Over 200 episodes x 75
    queries the standard error is about 1 point, so 30% is a safe floor."""
    codepoints = render.list_characters(max_strokes=8)[::60][:20]
    images = np.stack([render.render_character(c, 16, seed=0) for c in codepoints])[..., None]
    episodes = sample_episodes(images, 5, 1, 15, 200, np.random.default_rng(0))
    accuracy = nearest_neighbour_accuracies(episodes).mean()
    assert accuracy > 0.30, accuracy
