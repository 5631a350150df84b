"""Rollout: engines that generate, and the manager that feeds them and grades what they return."""
