"""The skipped-sample window: scattered bad samples pass, a concentration of them stops the worker."""

from __future__ import annotations

import pytest

from dinolite.data.skip_window import SkippedSampleWindow, TooManySkippedSamplesError


def test_skips_up_to_the_allowed_fraction_of_the_window_pass():
    window = SkippedSampleWindow(max_fraction=0.29, size=100, where="worker 0")
    assert window.allowed == 29  # 0.29 * 100 is 28.999...: the rule means 29
    for i in range(29):
        window.add(True, f"bad {i}")
    with pytest.raises(TooManySkippedSamplesError) as caught:
        window.add(True, "bad 29")
    message = str(caught.value)
    assert "30 of the last 30 samples read by worker 0" in message
    assert "bad 27; bad 28; bad 29" in message  # the three latest examples


def test_the_count_is_over_the_last_window_only():
    window = SkippedSampleWindow(max_fraction=0.2, size=10, where="worker 1")
    for _ in range(50):  # 2 bad in every 10: always at the limit, never over it
        for skipped in (True, True, *([False] * 8)):
            window.add(skipped, "x")
    assert window.skipped == 2 and len(window.flags) == 10


def test_a_half_corrupt_source_stops_before_the_window_fills():
    window = SkippedSampleWindow(max_fraction=0.01, size=10_000, where="worker 2")
    with pytest.raises(TooManySkippedSamplesError):
        for i in range(10_000):
            window.add(i % 2 == 0, "x")
    assert len(window.flags) < 300  # about 2 * 0.01 * 10000 samples


def test_a_zero_fraction_stops_at_the_first_skip_and_bad_settings_are_refused():
    window = SkippedSampleWindow(max_fraction=0.0, size=5, where="worker 3")
    window.add(False)
    with pytest.raises(TooManySkippedSamplesError):
        window.add(True, "x")
    with pytest.raises(ValueError, match="max_fraction must be in"):
        SkippedSampleWindow(max_fraction=1.5, size=5, where="w")
    with pytest.raises(ValueError, match="must hold >= 1 sample"):
        SkippedSampleWindow(max_fraction=0.1, size=0, where="w")
