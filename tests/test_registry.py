"""The method registry: one list that the CLI, evaluate and the demo read."""

import pytest

from coinseg.attribution import build_attributor
from coinseg.errors import UsageError
from coinseg.models import build_classifier
from coinseg.registry import ATTRIBUTION, COUNTERFACTUAL, DEMO, METHODS, methods_help, parse_methods


def test_parse_methods() -> None:
    assert parse_methods("coin, RISE,coin") == ["coin", "rise"]
    with pytest.raises(UsageError, match="unknown method 'foo'"):
        parse_methods("coin,foo")
    with pytest.raises(UsageError, match="--methods"):
        parse_methods(" , ")


def test_every_method_is_listed_once_and_offered() -> None:
    assert set(COUNTERFACTUAL) | set(ATTRIBUTION) == set(METHODS)
    assert not set(COUNTERFACTUAL) & set(ATTRIBUTION)
    assert set(DEMO) <= set(METHODS)
    assert all(name in methods_help() for name in METHODS)


@pytest.mark.parametrize("name", ATTRIBUTION)
def test_every_attribution_method_builds(name: str) -> None:
    assert callable(build_attributor(name, build_classifier("small", [4, 8, 8, 8])))
