"""StepBans (bans kept token by token) against the pure functions of rewriters.engines.bans."""

from __future__ import annotations

import numpy as np
import pytest

from rewriters.engines.bans import Countdown, repeated_trigram_bans, repeated_word_bans
from rewriters.engines.step_bans import BanTables, StepBans

C = 40  # score columns
END = 39  # <|end|>'s column
MARKERS = {1: 30, 2: 31, 3: 32, 6: 33, 9: 34, 12: 35}  # words remaining -> column


def _expected(gen, skip, opens, countdown, last_step, lengths):
    """(R, C) bool: what the pure functions ban after ``gen`` (R, t), as the old loop did."""
    rows, t = gen.shape
    banned = np.zeros((rows, C), bool)
    if t >= 3:
        r, c = repeated_trigram_bans(gen, skip)
        banned[r, c] = True
    if opens is not None and t:
        r, c = repeated_word_bans(gen, opens)
        banned[r, c] = True
    if countdown is not None:
        no_end, no_marker = countdown.bans(gen, last_step, lengths)
        banned[no_end, END] = True
        banned[:, countdown.ids] |= no_marker
    return banned


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["plain", "markers", "unique_words"])
def test_step_bans_equal_the_pure_bans_at_every_step(seed, kind):
    """Random sequences over a small alphabet (so 3-grams and words repeat), markers among
    them; a row is dropped half way, as when it ends. Every step bans the same (row, column)
    pairs as the pure functions over the whole prefix."""
    rng = np.random.default_rng(seed)
    rows, steps = 4, 30
    skip = np.zeros(C, bool)
    skip[list(MARKERS.values())] = True
    opens = rng.random(C) < 0.5 if kind == "unique_words" else None
    countdown = Countdown(MARKERS, C, every=3, tail=3) if kind != "plain" else None
    alphabet = [0, 1, 2, 3, 4] + (list(MARKERS.values()) if kind != "plain" else [])
    gen = rng.choice(alphabet, size=(rows, steps))
    lengths = np.array([5, 12, 18, 40])
    budgets = rng.integers(steps // 2, steps + 1, size=rows)
    state = StepBans(BanTables(skip if kind != "plain" else None, opens, countdown, END),
                     lengths.tolist())
    alive = np.arange(rows)
    for t in range(steps):
        if t == steps // 2:  # row 1 ends: the batch keeps the others
            keep = np.array([0, 2, 3])
            alive = alive[keep]
            state.keep(keep.tolist())
        last_step = t + 1 == budgets[alive]
        scores = rng.normal(size=(len(alive), C)).astype(np.float32)
        state.apply(scores, last_step.tolist())
        want = _expected(gen[alive, :t], skip if kind != "plain" else None, opens, countdown,
                         last_step, lengths[alive])
        np.testing.assert_array_equal(np.isneginf(scores), want, err_msg=f"step {t}")
        state.push(gen[alive, t].tolist())


def test_markers_between_words_do_not_hide_a_repeated_phrase():
    """Hand-made: after "a b <|r=3|> c a b" the text alone ("a b c a b") bans c, which the
    tokens' own 3-grams ("a b <|r=3|>") cannot see; they ban <|r=3|>."""
    skip = np.zeros(C, bool)
    skip[list(MARKERS.values())] = True
    state = StepBans(BanTables(skip, None, None, END), [12])
    for tok in [0, 1, MARKERS[3], 2, 0, 1]:
        state.push([tok])
    scores = np.zeros((1, C), np.float32)
    state.apply(scores, [False])
    assert np.flatnonzero(np.isneginf(scores[0])).tolist() == [2, MARKERS[3]]
