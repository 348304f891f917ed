"""Metrics read at scrape time: the rows an engine launched ahead of the host's reads."""

from prometheus_client import generate_latest

from specdec.core.batching import StepStats
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
