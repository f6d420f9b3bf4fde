"""Where the rate limiter's algorithms come from.

The sliding-window log and the fixed-window counter live in the state layer
(:mod:`bastion.stores._window_log`, :mod:`bastion.stores._fixed_window`) so
that the memory store can run them too without importing this layer. This
module names them for the limiter and keeps the old import path working.
"""

from __future__ import annotations

from bastion.stores._fixed_window import FixedWindowCounter
from bastion.stores._window_log import RateLimitBackend, SlidingWindowLog, WindowDecision

__all__ = ["FixedWindowCounter", "RateLimitBackend", "SlidingWindowLog", "WindowDecision"]
