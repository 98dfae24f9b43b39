"""``policyopt.client.structs``: JSON-like dicts survive a trip through ``google.protobuf.Struct``."""

from __future__ import annotations

import pytest

from policyopt.client.errors import PolicyOptError
from policyopt.client.structs import dict_to_struct, struct_to_dict


def test_a_dict_round_trips_with_integral_numbers_back_as_int_at_any_depth() -> None:
    data = {
        "answer": 42,
        "ratio": 0.25,
        "negative": -3,
        "flag": True,
        "missing": None,
        "text": "seven",
        "steps": [1, 2.5, [3, {"deep": 4}]],
        "nested": {"count": 7, "items": [{"id": 8}, {"id": 9.5}], "empty": {}},
    }

    back = struct_to_dict(dict_to_struct(data))

    assert back == data
    assert type(back["answer"]) is int
    assert type(back["ratio"]) is float
    assert type(back["flag"]) is bool
    assert type(back["steps"][2][1]["deep"]) is int
    assert type(back["nested"]["items"][0]["id"]) is int


def test_none_and_an_empty_mapping_give_an_empty_struct() -> None:
    assert struct_to_dict(dict_to_struct(None)) == {}
    assert struct_to_dict(dict_to_struct({})) == {}


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes"])
def test_a_value_json_cannot_hold_raises_the_protobuf_error_not_an_sdk_error(value: object) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        dict_to_struct({"bad": value})
    assert not isinstance(caught.value, PolicyOptError)
