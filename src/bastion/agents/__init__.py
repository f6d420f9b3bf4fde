"""Agents: a model, instructions and typed tools, run as a loop."""

from bastion.agents._agent import Agent, RunResult, StepLimitReached
from bastion.agents._tools import Tool, ToolError, tool

__all__ = ["Agent", "RunResult", "StepLimitReached", "Tool", "ToolError", "tool"]
