"""Bastion: make LLM agents survive production."""
