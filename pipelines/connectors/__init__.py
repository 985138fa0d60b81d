"""Connectors that pull new and updated tickets from ticketing systems for the hourly ingest.

Each connector returns a ``ConnectorBatch`` whose records have exactly the ``Ticket`` fields
(plus ``label``), whose rejects carry a reason, and whose ``next_cursor`` the ingest stores
and passes back next hour.
"""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from cca.errors import ConfigError
from cca.settings import Settings
from pipelines.connectors.base import ConnectorBatch, TicketConnector
from pipelines.connectors.jira_sm import JiraServiceManagementConnector, adf_to_text
from pipelines.connectors.servicenow import ServiceNowConnector
from pipelines.connectors.zendesk import ZendeskConnector

__all__ = [
    "ConnectorBatch",
    "JiraServiceManagementConnector",
    "ServiceNowConnector",
    "TicketConnector",
    "ZendeskConnector",
    "adf_to_text",
    "connectors_from_settings",
]


def _configured(settings: Settings, system: str, names: tuple[str, ...]) -> bool:
    """True when every setting is given, False when none is; half a configuration is an error
    (a typo in one variable would otherwise switch a connector off without a word)."""
    given = [n for n in names if _plain(getattr(settings, n))]
    if given and len(given) < len(names):
        missing = ", ".join(f"CCA_{n.upper()}" for n in names if n not in given)
        raise ConfigError(f"{system} connector is half configured: set {missing} "
                          f"or unset the other CCA_{system.upper()}_* settings")
    return bool(given)


def _plain(value: object) -> str:
    """A setting as text, secrets unwrapped; unset and blank both mean 'not given'."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return str(value).strip() if value is not None else ""


def connectors_from_settings(
    settings: Settings, client: httpx.Client | None = None
) -> list[TicketConnector]:
    """The connectors whose settings are all present, in a fixed order."""
    out: list[TicketConnector] = []
    if _configured(settings, "servicenow",
                   ("servicenow_url", "servicenow_user", "servicenow_password")):
        out.append(ServiceNowConnector(
            _plain(settings.servicenow_url), _plain(settings.servicenow_user),
            _plain(settings.servicenow_password), client))
    if _configured(settings, "zendesk", ("zendesk_url", "zendesk_email", "zendesk_token")):
        out.append(ZendeskConnector(
            _plain(settings.zendesk_url), _plain(settings.zendesk_email),
            _plain(settings.zendesk_token), client))
    if _configured(settings, "jira",
                   ("jira_url", "jira_email", "jira_token", "jira_service_desk_id")):
        out.append(JiraServiceManagementConnector(
            _plain(settings.jira_url), _plain(settings.jira_email), _plain(settings.jira_token),
            _plain(settings.jira_service_desk_id), client))
    return out
