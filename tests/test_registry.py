"""The generic name registry, and the real METHODS / TASKS / METRICS registries."""
from __future__ import annotations

import pytest

from unlearnbench.registry import METHODS, METRICS, TASKS, Registry, UnknownNameError, load_all

# --------------------------------------------------------------------------------------------
# the generic Registry


@pytest.fixture
def reg() -> Registry:
    r: Registry = Registry("widget")

    @r.register("alpha", aliases=("a", "first"))
    class Alpha:
        pass

    r.add("beta", "the beta object")

    @r.register("gamma_ray", aliases=("gr",))
    def gamma() -> str:
        return "g"

    return r


def test_register_returns_the_object_and_get_finds_it_by_name_and_alias(reg: Registry) -> None:
    alpha = reg.get("alpha")
    assert isinstance(alpha, type) and alpha.__name__ == "Alpha"  # the decorator returned the class itself
    assert reg.get("a") is alpha and reg.get("first") is alpha
    assert reg.get("beta") == "the beta object"
    assert reg.get("gr")() == "g"


def test_names_are_canonical_and_in_registration_order(reg: Registry) -> None:
    assert reg.names() == ["alpha", "beta", "gamma_ray"]
    assert list(reg) == ["alpha", "beta", "gamma_ray"]
    assert len(reg) == 3
    reg.add("aardvark", 1)  # alphabetically first, registered last
    assert reg.names()[-1] == "aardvark"


def test_canonical_resolves_aliases(reg: Registry) -> None:
    assert reg.canonical("alpha") == "alpha"
    assert reg.canonical("a") == "alpha"
    assert reg.canonical("first") == "alpha"
    assert reg.canonical("gr") == "gamma_ray"


def test_contains_knows_names_and_aliases(reg: Registry) -> None:
    assert "alpha" in reg and "first" in reg and "gr" in reg
    assert "delta" not in reg and "Alpha" not in reg  # exact, case-sensitive


def test_aliases_of(reg: Registry) -> None:
    assert reg.aliases_of("alpha") == ["a", "first"]
    assert reg.aliases_of("beta") == []
    assert reg.aliases_of("gamma_ray") == ["gr"]
    assert reg.aliases_of("a") == []  # aliases of a name, not of an alias


@pytest.mark.parametrize(
    "name, aliases",
    [
        ("alpha", ()),  # name taken by a name
        ("a", ()),  # name taken by an alias
        ("delta", ("beta",)),  # alias taken by a name
        ("delta", ("gr",)),  # alias taken by an alias
    ],
)
def test_duplicate_names_and_aliases_are_rejected_atomically(reg: Registry, name: str, aliases: tuple) -> None:
    before = (reg.names(), {n: reg.aliases_of(n) for n in reg.names()})
    with pytest.raises(ValueError, match="already registered"):
        reg.add(name, object(), aliases=aliases)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(name, aliases=aliases)(object())
    # nothing was half-registered
    assert (reg.names(), {n: reg.aliases_of(n) for n in reg.names()}) == before
    assert "delta" not in reg


def test_unknown_name_suggests_the_close_name(reg: Registry) -> None:
    with pytest.raises(UnknownNameError) as info:
        reg.get("gama_ray")
    message = str(info.value)
    assert "Did you mean 'gamma_ray'" in message
    assert message.startswith("unknown widget 'gama_ray'.")  # no KeyError quoting around the message
    assert "alpha, beta, gamma_ray" in message  # lists the known names
    assert isinstance(info.value, KeyError)  # callers may catch it as a KeyError

    with pytest.raises(UnknownNameError, match="Did you mean 'first'"):
        reg.canonical("firts")  # close to an alias


def test_unknown_name_without_close_match_has_no_suggestion(reg: Registry) -> None:
    with pytest.raises(UnknownNameError) as info:
        reg.canonical("zzzzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "Known widgets: alpha, beta, gamma_ray" in str(info.value)


def test_registries_are_independent() -> None:
    r1: Registry = Registry("one")
    r2: Registry = Registry("two")
    r1.add("x", 1)
    r2.add("x", 2)  # same name in another registry is fine
    assert r1.get("x") == 1 and r2.get("x") == 2


# --------------------------------------------------------------------------------------------
# the real registries

EXPECTED_METHODS = ["pretrain", "naive_deletion", "neggrad", "erasediff", "siss", "siss_no_is",
                    "retrack", "retrack_all", "retrain"]


@pytest.fixture(scope="module")
def loaded() -> None:
    load_all()


def test_methods_registry_holds_exactly_the_nine_methods_in_table_order(loaded: None) -> None:
    # methods/__init__.py promises that import order = row order of the tables
    assert METHODS.names() == EXPECTED_METHODS


def test_method_aliases(loaded: None) -> None:
    assert METHODS.canonical("vanilla") == "naive_deletion"
    assert METHODS.canonical("gradient_ascent") == "neggrad"
    assert METHODS.get("vanilla") is METHODS.get("naive_deletion")
    assert METHODS.get("gradient_ascent") is METHODS.get("neggrad")
    assert "vanilla" in METHODS.aliases_of("naive_deletion")
    assert "gradient_ascent" in METHODS.aliases_of("neggrad")


def test_method_typo_gets_a_suggestion(loaded: None) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'retrack'"):
        METHODS.get("retrak")


def test_tasks_registry(loaded: None) -> None:
    assert set(TASKS.names()) >= {"mnist_tshirt", "mnist_tshirt_mini"}
    assert "mnist_tshirt" in TASKS and "mnist_tshirt_mini" in TASKS
    for name in ("mnist_tshirt", "mnist_tshirt_mini"):
        task = TASKS.get(name)
        assert task.name == name
        assert task.protocol == "mnist_tshirt"


def test_every_metric_declares_direction_and_implementation(loaded: None) -> None:
    assert len(METRICS) > 0
    assert "forget_rate" in METRICS
    for name in METRICS.names():
        metric = METRICS.get(name)
        assert isinstance(metric.higher_is_better, bool), name  # not 0/1, not None
        assert isinstance(metric.implementation, str) and metric.implementation.strip(), name
    assert METRICS.get("forget_rate").higher_is_better is False
    assert METRICS.get("is_clf").higher_is_better is True


def test_load_all_is_idempotent(loaded: None) -> None:
    load_all()  # a second call must not re-register (which would raise "already registered")
    assert METHODS.names() == EXPECTED_METHODS
