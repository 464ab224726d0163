"""``inferq bench``: load generation and measurement against a running system."""
