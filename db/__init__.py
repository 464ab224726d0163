"""Persistence: SQLAlchemy models, engine and sessions, repositories (the only SQL), migrations."""
