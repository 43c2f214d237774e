"""The generic name registry, and the real METHODS / TASKS / METRICS registries."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import unlearnbench.methods
from unlearnbench.method import ROLES
from unlearnbench.protocols import MNIST_TSHIRT
from unlearnbench.registry import METHODS, METRICS, TASKS, Registry, UnknownNameError, load_all

# --------------------------------------------------------------------------------------------
# the generic Registry


def _nothing_to_discover(registry: Registry) -> None:
    """A registry of the tests' own entries: nothing built in."""


def _widgets() -> Registry:
    return Registry("widget", "builtins:object", _nothing_to_discover)


def _in_module(name: str) -> type:
    """A class defined in a module whose file name is ``name`` (what ``register`` names an entry by)."""
    return type(name.title().replace("_", ""), (), {"__module__": f"somepackage.{name}"})


@pytest.fixture
def reg() -> Registry:
    r = _widgets()

    class Alpha:
        pass

    r.add("alpha", Alpha, aliases=("a", "first"))
    r.add("beta", "the beta object")

    def gamma() -> str:
        return "g"

    r.add("gamma_ray", gamma, aliases=("gr",))
    return r


def test_add_registers_the_object_and_get_finds_it_by_name_and_alias(reg: Registry) -> None:
    alpha = reg.get("alpha")
    assert isinstance(alpha, type) and alpha.__name__ == "Alpha"
    assert reg.get("a") is alpha and reg.get("first") is alpha
    assert reg.get("beta") == "the beta object"
    assert reg.get("gr")() == "g"


def test_register_names_a_class_by_its_modules_file_and_returns_it() -> None:
    r = _widgets()
    bare, with_aliases = _in_module("delta_wing"), _in_module("epsilon")
    assert r.register(bare) is bare  # bare decorator: @REGISTRY.register
    assert r.register(aliases=("eps", "e"))(with_aliases) is with_aliases  # @REGISTRY.register(aliases=...)
    assert bare.name == "delta_wing" and with_aliases.name == "epsilon"  # the name is written nowhere else
    assert r.names() == ["delta_wing", "epsilon"]
    assert r.get("delta_wing") is bare and r.get("eps") is with_aliases and r.get("e") is with_aliases
    assert r.aliases_of("epsilon") == ["eps", "e"]


def test_names_are_canonical_and_in_registration_order(reg: Registry) -> None:
    assert reg.names() == ["alpha", "beta", "gamma_ray"]
    assert list(reg) == ["alpha", "beta", "gamma_ray"]
    assert len(reg) == 3
    reg.add("aardvark", 1)  # alphabetically first, registered last
    assert reg.names()[-1] == "aardvark"


def test_sort_key_orders_names() -> None:
    r = Registry("widget", "builtins:object", _nothing_to_discover, sort_key=lambda name, obj: (obj, name))
    r.add("late", 3)
    r.add("early", 1)
    r.add("middle", 2)
    assert r.names() == ["early", "middle", "late"] and list(r) == ["early", "middle", "late"]


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
        reg.register(aliases=aliases)(_in_module(name))
    if not aliases:  # a lazy entry takes a name only
        with pytest.raises(ValueError, match="already registered"):
            reg.add_lazy(name, "somepackage.somewhere")
    # nothing was half-registered
    assert (reg.names(), {n: reg.aliases_of(n) for n in reg.names()}) == before
    assert "delta" not in reg


def test_entries_must_be_of_the_registrys_base_type() -> None:
    r = Registry("number", "numbers:Number", _nothing_to_discover)
    r.add("one", 1)
    with pytest.raises(TypeError, match="must be a"):
        r.add("word", "one")
    with pytest.raises(TypeError, match="must be a"):
        r.register(_in_module("not_a_number"))  # a class must subclass the base
    assert r.names() == ["one"]


def test_lazy_entries_are_imported_on_use() -> None:
    r = Registry("function", "builtins:object", _nothing_to_discover)
    r.add_lazy("dumps", "json:dumps")
    from json import dumps

    assert r.get("dumps") is dumps


def test_remove_forgets_a_name_and_its_aliases(reg: Registry) -> None:
    reg.remove("alpha")
    assert "alpha" not in reg and "a" not in reg and "first" not in reg
    assert reg.names() == ["beta", "gamma_ray"]
    reg.add("alpha", 1, aliases=("a",))  # free again
    assert reg.get("a") == 1


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
    r1, r2 = _widgets(), _widgets()
    r1.add("x", 1)
    r2.add("x", 2)  # same name in another registry is fine
    assert r1.get("x") == 1 and r2.get("x") == 2


# --------------------------------------------------------------------------------------------
# the real registries

#: Every method module: the registry discovers them (a method is one file under methods/, named by it).
METHOD_FILES = sorted(p.stem for p in Path(unlearnbench.methods.__file__).parent.glob("*.py")
                      if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def loaded() -> None:
    load_all()


def test_every_method_file_is_a_registered_method_named_after_it(loaded: None) -> None:
    assert len(METHOD_FILES) >= 3
    assert sorted(METHODS.names()) == METHOD_FILES
    for name in METHOD_FILES:
        cls = METHODS.get(name)
        assert cls.name == name and cls.__module__ == f"unlearnbench.methods.{name}"


def test_methods_are_in_table_order_by_role_then_order(loaded: None) -> None:
    """Rows: the model before unlearning first, the unlearning methods by ``order``, the oracle last."""
    names = METHODS.names()
    roles = [METHODS.get(n).role for n in names]
    assert set(roles) <= set(ROLES)
    assert roles[0] == "reference_before" and roles[-1] == "oracle"
    assert roles.count("reference_before") == 1 and roles.count("oracle") == 1
    assert all(r == "unlearning" for r in roles[1:-1])
    ranks = [(ROLES.index(METHODS.get(n).role), METHODS.get(n).order, n) for n in names]
    assert ranks == sorted(ranks)
    assert names[0] == "pretrain" and names[-1] == "retrain"  # the two references of every table


def test_a_method_role_must_be_known() -> None:
    from unlearnbench.method import Method

    with pytest.raises(TypeError, match="role"):
        type("Bad", (Method,), {"role": "baseline"})


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
        assert task.protocol == "mnist_tshirt" and task.protocol is MNIST_TSHIRT


def test_every_metric_declares_direction_and_implementation(loaded: None) -> None:
    assert len(METRICS) > 0
    assert "forget_rate" in METRICS
    for name in METRICS.names():
        metric = METRICS.get(name)
        assert isinstance(metric.higher_is_better, bool), name  # not 0/1, not None
        assert isinstance(metric.implementation, str) and metric.implementation.strip(), name
    assert METRICS.get("forget_rate").higher_is_better is False
    assert METRICS.get("is_clf").higher_is_better is True
    orders = [(METRICS.get(n).order, n) for n in METRICS.names()]
    assert orders == sorted(orders)  # columns in the metrics' declared order


def test_load_all_is_idempotent(loaded: None) -> None:
    before = (METHODS.names(), TASKS.names(), METRICS.names())
    load_all()  # a second call must not re-register (which would raise "already registered")
    assert (METHODS.names(), TASKS.names(), METRICS.names()) == before
    assert sorted(METHODS.names()) == METHOD_FILES


def test_importing_a_method_module_before_the_registry_is_read_keeps_discovery_working() -> None:
    """``from unlearnbench.methods.retrack import ReTrack`` in a fresh process, then reading METHODS: the
    class registered on import and the discovered entry are one, not an "already registered" error."""
    code = ("from unlearnbench.methods.retrack import ReTrack\n"
            "from unlearnbench.registry import METHODS\n"
            "assert METHODS.get('retrack') is ReTrack, METHODS.get('retrack')\n"
            "print(','.join(METHODS.names()))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(proc.stdout.strip().split(",")) == METHOD_FILES


def test_register_takes_an_explicit_name_for_a_class_outside_a_file_of_its_own() -> None:
    r = _widgets()
    scripted = type("Scripted", (), {"__module__": "__main__"})
    with pytest.raises(ValueError, match="register\\(name="):
        r.register(scripted)
    assert r.register(name="scripted_widget")(scripted) is scripted and scripted.name == "scripted_widget"
    assert r.get("scripted_widget") is scripted


def test_protocols_pickle_and_copy_with_their_source() -> None:
    import copy
    import pickle

    from unlearnbench.protocols import PROTOCOLS

    for protocol in PROTOCOLS:
        for clone in (pickle.loads(pickle.dumps(protocol)), copy.deepcopy(protocol)):
            assert clone == protocol and clone.source == protocol.source and type(clone) is type(protocol)

