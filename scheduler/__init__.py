"""Scheduler: Celery beat, the reconciler, experiment checks and the autoscaler."""
