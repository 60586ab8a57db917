"""util/id.c identifier rules."""

from __future__ import annotations

import pytest

from netstack.errors import GenericError
from netstack.qapi import check_id, id_wellformed


@pytest.mark.parametrize("value", ["a", "Z", "net0", "a-b.c_d9", "x..--__"])
def test_wellformed(value: str) -> None:
    assert id_wellformed(value)
    check_id(value)


@pytest.mark.parametrize("value", ["", "1a", "-a", ".a", "_a", "a b", "a,b", "é", "aé", "a/b"])
def test_malformed(value: str) -> None:
    assert not id_wellformed(value)
    with pytest.raises(GenericError) as info:
        check_id(value)
    assert info.value.desc == "Parameter 'id' expects an identifier"
    assert info.value.qmp_class == "GenericError"


def test_parameter_name() -> None:
    with pytest.raises(GenericError) as info:
        check_id("1", "netdev")
    assert info.value.desc == "Parameter 'netdev' expects an identifier"
