"""The queue-depth autoscaler: observe the lanes, decide a worker count, act through a backend.

``observe`` reads brokers, Postgres and heartbeats; ``policy`` is a pure function from an
observation to a decision; ``loop`` polls, records each decision in Postgres and applies it
through one of ``scheduler.backends``.
"""
