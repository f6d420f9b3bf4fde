"""Test aids shipped for users too: a clock you drive, and an LLM server that fails on cue."""

from bastion.testing._chaos import ChaosServer, RecordedRequest, Scenario, Step
from bastion.testing._clock import FakeClock

__all__ = ["ChaosServer", "FakeClock", "RecordedRequest", "Scenario", "Step"]
