"""inferq: asynchronous, queue-driven serving for PyTorch models."""

__version__ = "0.1.0"
