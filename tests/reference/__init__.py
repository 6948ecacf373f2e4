"""Slow, plainly written reference implementations used to check the fast library code."""
