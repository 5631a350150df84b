"""Advantages and losses: pure tensor functions, independent of any backend."""
