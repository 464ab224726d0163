"""What every service shares: settings, errors, messages, the broker (queues and the Celery
factory), the model-handler interface, artifacts, status keys, logs and metrics.

Imports nothing of inferq's but ``db``."""
