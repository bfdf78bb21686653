"""Domain names: whole-string checks, never all digits (a domain is found by its id or its name)."""

from __future__ import annotations

import pytest

from pyhv.errors import UsageError
from pyhv.model import from_plain


def _named(name: str) -> dict[str, object]:
    return {"name": name, "kernel": "/k"}


@pytest.mark.parametrize("name", ["1", "42", "0007", "a\n", "a\r", "web\x00", "a\tb", "-a", "", "a" * 65, "wéb"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError) as e:
        from_plain(_named(name))
    assert str(e.value).startswith("name: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["a", "1a", "web1", "10.0.0.1", "a_b-c.d", "9" * 63 + "x"])
def test_good_names_are_accepted(name: str) -> None:
    assert from_plain(_named(name)).name == name
