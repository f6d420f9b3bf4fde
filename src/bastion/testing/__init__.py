"""Test aids shipped for users too: drive time by hand instead of sleeping."""

from bastion.testing._clock import FakeClock

__all__ = ["FakeClock"]
