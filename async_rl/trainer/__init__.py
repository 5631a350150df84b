"""Trainer backends behind the `Trainer` protocol."""
