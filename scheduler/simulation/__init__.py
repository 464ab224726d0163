"""``inferq simulate``: a day of traffic against the real autoscaler policy, in seconds.

A discrete-event simulation on SimPy: arrivals from a profile, workers that cold-start,
serve batches along a measured batching curve and drain, and the policy of
``scheduler.autoscaler.policy`` deciding every poll. Queues are fluid cohorts served in
order within each tick, so 10,000 jobs/s for a day costs ticks, not jobs.
"""
