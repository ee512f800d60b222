"""Rule parameters: defaults, overrides by name, clear errors."""

from __future__ import annotations

import pytest

from preassign.core.params import ParamError, Params, parse_overrides


def test_defaults_are_the_spec_table():
    assert Params().to_dict() == {
        "default_box_size": 8, "max_requests": 2, "request_window_days": 90,
        "repeat_window_days": 60, "explore_slots": 2, "max_per_genre": 3, "prior_weight": 20.0,
        "own_weight_2": -1.0, "own_weight_3": 0.5, "own_weight_4": 1.5, "genre_weight": 0.5,
        "favorite_genre_bonus": 0.5, "new_days": 28, "new_bonus": 0.5, "explore_jitter": 0.5,
        "stock_max_rounds": 100,
    }


def test_stock_max_rounds_is_at_least_one():
    with pytest.raises(ParamError, match="'stock_max_rounds' must be >= 1"):
        Params(stock_max_rounds=0)
    assert parse_overrides(["stock_max_rounds=1"]) == {"stock_max_rounds": 1}


def test_every_parameter_is_settable_by_name():
    for name, value in Params().to_dict().items():
        new = 3 if isinstance(value, int) else 0.25
        assert Params.from_mapping(parse_overrides([f"{name}={new}"])).to_dict()[name] == new


@pytest.mark.parametrize(
    "item, message",
    [
        ("max_request=1", "unknown rule parameter 'max_request'"),
        ("max_requests", "expected NAME=VALUE"),
        ("max_requests=two", "must be an integer"),
        ("max_requests=1.5", "must be an integer"),
        ("max_per_genre=0", "must be >= 1"),
        ("default_box_size=0", "must be >= 1"),
        ("repeat_window_days=-1", "must be >= 0"),
        ("prior_weight=0", "must be > 0"),
        ("genre_weight=nan", "must be finite"),
        ("genre_weight=x", "must be a number"),
    ],
    ids=lambda v: v if "=" in v or " " not in v else None,
)
def test_bad_overrides_are_clear_errors(item, message):
    with pytest.raises(ParamError, match=message):
        parse_overrides([item])


def test_unknown_name_lists_valid_names():
    with pytest.raises(ParamError, match="valid names: default_box_size"):
        Params.from_mapping({"nope": 1})


def test_params_are_frozen_and_replace_checks():
    p = Params()
    with pytest.raises(AttributeError):
        p.max_requests = 3  # type: ignore[misc]
    assert p.replace(max_requests=0).max_requests == 0
    with pytest.raises(ParamError):
        p.replace(bogus=1)
