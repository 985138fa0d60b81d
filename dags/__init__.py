"""Workflow files for the scheduler: they declare tasks only; nothing imports this package."""
