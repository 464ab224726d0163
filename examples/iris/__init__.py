"""Iris: a small classifier trained with PyTorch and served by inferq (see README.md)."""
