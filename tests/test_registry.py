"""One registry pattern for every choice a config makes by name."""

import pytest

from mergemix.errors import MergeMixError
from mergemix.registry import Registry


def test_registry_adds_by_decorator_and_names_the_choices_in_one_line():
    reg = Registry("widget", {"a": 1})

    @reg.register("b")
    def b():
        return 2

    assert reg.get("a") == 1 and reg.get("b")() == 2 and list(reg) == ["a", "b"]
    with pytest.raises(MergeMixError, match=r"^task 't': unknown widget 'c' \(choose from a, b\)$"):
        reg.get("c", "task 't': ")


def test_every_named_choice_of_the_config_is_a_registry():
    from mergemix.benchmarks.suite import BUILDERS, SOURCES
    from mergemix.models import ARCHS
    from mergemix.search.backends import BACKENDS
    from mergemix.search.baselines import BASELINES
    from mergemix.search.optuna_backend import SAMPLERS
    from mergemix.strategies import STRATEGIES

    regs = [ARCHS, BACKENDS, SAMPLERS, BASELINES, STRATEGIES, SOURCES, BUILDERS]
    assert all(isinstance(r, Registry) and len(r) >= 2 for r in regs)
    assert set(SAMPLERS) == {"tpe", "cmaes", "gp", "qmc", "random"}
    assert type(SAMPLERS.get("qmc")(3)).__name__ == "QMCSampler"
