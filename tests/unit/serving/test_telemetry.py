"""Metrics read at scrape time: the rows an engine launched ahead of the host's reads, and the load gauges."""

from prometheus_client import generate_latest

from specdec.core.step_costs import StepStats
from specdec.serving.telemetry import Metrics


def test_rows_launched_ahead_are_summed_over_engines_by_kind_at_scrape_time():
    target, draft = StepStats(guesses=10, guesses_kept=9, early=4, early_kept=4), StepStats(ahead=4, ahead_kept=3)
    metrics = Metrics("target")
    metrics.track_launched(lambda: [target.launched_ahead(), draft.launched_ahead()])
    target.guesses += 5  # read when scraped, not when tracked
    text = generate_latest(metrics.registry).decode()
    for line in ('specdec_rows_launched_ahead_total{kind="guess",role="target"} 15.0',
                 'specdec_rows_launched_ahead_kept_total{kind="guess",role="target"} 9.0',
                 'specdec_rows_launched_ahead_total{kind="verify",role="target"} 4.0',
                 'specdec_rows_launched_ahead_total{kind="draft",role="target"} 4.0',
                 'specdec_rows_launched_ahead_kept_total{kind="draft",role="target"} 3.0'):
        assert line in text, text


def test_a_scrape_reads_the_load_once_for_its_three_gauges():
    """A target whose engine runs apart answers each reading over its pipe: one per scrape, not one per gauge."""
    readings = []
    metrics = Metrics("target")
    metrics.track(lambda: readings.append(1) or (3, 13, 2))
    text = generate_latest(metrics.registry).decode()
    assert len(readings) == 1
    for line in ('specdec_active_sessions{role="target"} 3.0', 'specdec_free_kv_slots{role="target"} 13.0',
                 'specdec_queue_length{role="target"} 2.0'):
        assert line in text, text
