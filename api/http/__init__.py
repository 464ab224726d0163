"""HTTP plumbing every route shares: problems, auth, rate limits, request ids and the
access log, bodies, rendering, validation, metrics."""
