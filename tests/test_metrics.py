"""The console's throughput figures, as llm.c computes them."""

import pytest

from ds_train.metrics import Throughput


def test_the_closing_line_averages_the_steps_after_the_first():
    throughput = Throughput()
    for seconds in (5.0, 0.2, 0.4):  # the first step (compiling, allocating) is left out of the mean
        throughput.update(1000, seconds)
    assert throughput.summary() == "total average iteration time: 300.00 ms"


def test_a_run_of_one_step_says_it_has_no_average_rather_than_zero_ms():
    throughput = Throughput()
    throughput.update(1000, 5.0)
    assert "n/a" in throughput.summary() and "0.00 ms" not in throughput.summary()


def test_tokens_per_second_is_the_first_steps_rate_then_a_bias_corrected_average_of_the_later_ones():
    throughput = Throughput()
    assert throughput.update(1000, 5.0) == pytest.approx(200.0)
    assert throughput.update(1000, 0.5) == pytest.approx(2000.0)  # bias correction: one sample is its own average
    assert 2000.0 < throughput.update(1000, 0.25) < 4000.0


def test_a_run_that_trained_no_step_says_so():
    # a resumed run whose checkpoint is its last step (llm.c's resume loop may start it once more)
    assert Throughput().summary() == "total average iteration time: n/a (no step ran)"
