"""The vendors this installation talks to, from the settings: webhook parsers and writers.

A webhook is enabled by its secret alone (CCA_<VENDOR>_WEBHOOK_SECRET); a write-back by the
same credentials the pull connector uses. The routing map is loaded and checked against the
department map here, once at start, so a typo stops the service with one line instead of
routing tickets nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial

from pydantic import SecretStr

from cca.settings import Settings
from pipelines.integrations import (
    jira_webhook,
    jira_writer,
    servicenow,
    zendesk_webhook,
    zendesk_writer,
)
from pipelines.integrations.events import WebhookEvent
from pipelines.integrations.mapping import RoutingMap, load_routing_map
from pipelines.integrations.writeback import Writer

Parser = Callable[[Mapping[str, str], bytes], list[WebhookEvent]]


def _secret(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return (value or "").strip()


def configured(settings: Settings) -> bool:
    """Whether the loop is on: a webhook secret is set, or the pulled tickets are to be
    written back. A pull connector's credentials alone change nothing."""
    return bool(any(_secret(getattr(settings, name)) for name in (
        "zendesk_webhook_secret", "jira_webhook_secret", "servicenow_webhook_secret"))
        or settings.writeback)


def routing_from_settings(settings: Settings, departments: Iterable[str]) -> RoutingMap:
    """The routing map, checked against ``departments``: those of the model being served
    (its bundle keeps the department map it was trained with)."""
    routing = load_routing_map(settings.routing_path)
    routing.check_departments(departments)
    return routing


def webhook_parsers(settings: Settings, routing: RoutingMap) -> dict[str, Parser]:
    """A parser per source whose webhook secret is set; the others answer 404."""
    skew = float(settings.webhook_max_skew_s)
    out: dict[str, Parser] = {}
    if secret := _secret(settings.zendesk_webhook_secret):
        out["zendesk"] = partial(zendesk_webhook.parse_webhook, secret=secret, max_skew_s=skew)
    if secret := _secret(settings.jira_webhook_secret):
        out["jira"] = partial(jira_webhook.parse_webhook, secret=secret, max_skew_s=skew,
                              group_field=routing.vendor("jira").group_field)
    if secret := _secret(settings.servicenow_webhook_secret):
        out["servicenow"] = partial(servicenow.parse_webhook, secret=secret, max_skew_s=skew)
    return out


def writers_from_settings(settings: Settings, routing: RoutingMap) -> dict[str, Writer]:
    """A writer per vendor whose API credentials are all set."""
    t = settings.writeback_timeout_s
    out: dict[str, Writer] = {}
    if settings.zendesk_url and settings.zendesk_email and _secret(settings.zendesk_token):
        out["zendesk"] = zendesk_writer.ZendeskWriter(settings.zendesk_url, settings.zendesk_email,
                                               _secret(settings.zendesk_token), timeout_s=t)
    if settings.jira_url and settings.jira_email and _secret(settings.jira_token):
        out["jira"] = jira_writer.JiraWriter(settings.jira_url, settings.jira_email,
                                      _secret(settings.jira_token),
                                      routing.vendor("jira").group_field, timeout_s=t)
    if (settings.servicenow_url and settings.servicenow_user
            and _secret(settings.servicenow_password)):
        out["servicenow"] = servicenow.ServiceNowWriter(
            settings.servicenow_url, settings.servicenow_user,
            _secret(settings.servicenow_password), timeout_s=t)
    return out
