"""A job deep in a backlog: its position estimated from the lane's queue, within bounds."""

from __future__ import annotations

from api.services.position import Lane, estimate_ahead

NOW = 1_800_000_000.0


def lane(queued: int, oldest_s_ago: float | None, newest_s_ago: float = 0.0) -> Lane:
    if oldest_s_ago is None:
        return Lane(1, 0, 0, 0.01, frozenset(), queued, None, None)
    return Lane(1, 0, 0, 0.01, frozenset(), queued, NOW - oldest_s_ago, NOW - newest_s_ago)


def test_a_job_is_placed_in_proportion_to_when_it_arrived_in_the_queued_span() -> None:
    """Catches: an estimate that ignores when the job came (every deep job "at the back"),
    or one outside what was counted and what is queued."""
    backlog = lane(100_000, 100.0)
    assert estimate_ahead(backlog, NOW - 50.0, 1000) == 50_000
    assert estimate_ahead(backlog, NOW - 99.0, 1000) == 1000  # never below what was counted
    assert estimate_ahead(backlog, NOW + 5.0, 1000) == 99_999  # never all of the queue
    assert (
        estimate_ahead(backlog, NOW - 80.0, 1000)
        < estimate_ahead(backlog, NOW - 40.0, 1000)
        < estimate_ahead(backlog, NOW - 10.0, 1000)
    )


def test_a_queue_that_stopped_growing_is_spanned_up_to_its_newest_job() -> None:
    """Catches: a span taken up to now, which places the last job of a backlog submitted an
    hour ago near the front of it."""
    stopped = lane(100_000, 3700.0, newest_s_ago=3600.0)
    assert estimate_ahead(stopped, NOW - 3600.0, 1000) == 99_999
    assert estimate_ahead(stopped, NOW - 3650.0, 1000) == 50_000


def test_without_lane_figures_the_count_stands() -> None:
    """The lane's figures are a second old at most: a queue that looks no deeper than what
    was counted, or empty, leaves the count as it is."""
    assert estimate_ahead(lane(0, None), NOW - 1.0, 1000) == 1000
    assert estimate_ahead(lane(900, 30.0), NOW - 1.0, 1000) == 1000
    assert estimate_ahead(lane(5000, 0.0), NOW, 1000) == 4999
