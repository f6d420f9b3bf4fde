"""The base layer: clock, errors and events. Everything else builds on these."""
