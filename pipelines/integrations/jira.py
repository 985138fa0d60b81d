"""Jira's side of the ticketing loop, under one name: webhooks in, routing written back.

The two halves live in ``jira_webhook`` and ``jira_writer`` (kept apart to stay small);
import either from here.
"""

from __future__ import annotations

from pipelines.integrations.jira_webhook import group_value, parse_webhook
from pipelines.integrations.jira_writer import JiraWriter

__all__ = ["JiraWriter", "group_value", "parse_webhook"]
