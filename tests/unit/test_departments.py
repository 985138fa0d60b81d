import json

import pytest

from cca.departments import load_department_map
from cca.errors import ConfigError
from tests.conftest import BANKING77, FIXTURES, ROOT


def test_banking77_map_covers_every_label_once():
    m = load_department_map(ROOT / "rules" / "departments" / "banking77.yaml")
    labels = json.loads((BANKING77 / "categories.json").read_text())
    m.check_covers(labels)
    assert 6 <= len(set(m.mapping.values())) <= 10


def test_without_map_department_is_label():
    m = load_department_map(None)
    assert m.department("x") == "x" and m.department(None) is None


def test_label_in_two_departments_and_uncovered_label(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("departments:\n  A: [x]\n  B: [x]\n")
    with pytest.raises(ConfigError, match="both 'A' and 'B'"):
        load_department_map(p)
    m = load_department_map(FIXTURES / "service_desk_departments.yaml")
    with pytest.raises(ConfigError, match="1 label\\(s\\) in no department: refunds"):
        m.check_covers(["password_reset", "refunds"])


def test_malformed_map(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("departments: [a, b\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_department_map(p)
