"""Rules two services share: experiments and their reports, promotion, training runs,
webhooks and the SSRF guard, significance tests, the result cache, the worker fleet.

Imports ``inferq.core`` and ``db`` only."""
