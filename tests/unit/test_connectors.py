"""Which pull connectors the settings switch on. Each vendor's connector is tested against
its stand-in server in tests/unit/test_connector_<vendor>.py."""

from __future__ import annotations

import pytest

from cca.errors import ConfigError
from cca.settings import Settings
from pipelines.connectors import TicketConnector, connectors_from_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        if name.startswith(("servicenow_", "zendesk_", "jira_")):
            monkeypatch.delenv(f"CCA_{name.upper()}", raising=False)


def test_connectors_from_settings_returns_only_configured(clean_env: None) -> None:
    assert connectors_from_settings(Settings()) == []
    settings = Settings(servicenow_url="https://acme.service-now.com", servicenow_user="u",
                        servicenow_password="p", jira_url="https://acme.atlassian.net",
                        jira_email="e@x", jira_token="t", jira_service_desk_id="10")
    connectors = connectors_from_settings(settings)
    assert [c.name for c in connectors if isinstance(c, TicketConnector)] == ["servicenow", "jira"]


def test_half_configured_connector_is_a_config_error(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="CCA_ZENDESK_TOKEN"):
        connectors_from_settings(Settings(zendesk_url="https://acme.zendesk.com",
                                          zendesk_email="ops@acme.example"))
