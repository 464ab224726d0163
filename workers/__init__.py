"""Workers: Celery tasks, the model runtime, built-in model handlers."""
