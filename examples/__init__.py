"""Worked examples: each a model served by inferq, importable from the repository's root."""
