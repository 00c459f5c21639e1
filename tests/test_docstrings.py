"""The examples in eelsgpu's docstrings run and print what they show: the doctests of every module.

Truth: the output each example states. Examples that need a file or a GPU carry ``# doctest:
+SKIP``. Each example runs in an empty folder of its own.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import eelsgpu

#: Modules not imported here: ``eelsgpu.__main__`` runs the command line when imported.
NOT_IMPORTED = {"eelsgpu.__main__"}


def _module_names() -> list[str]:
    names = ["eelsgpu"]
    for info in pkgutil.walk_packages(eelsgpu.__path__, prefix="eelsgpu."):
        if info.name not in NOT_IMPORTED:
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _module_names())
def test_doctests(name, tmp_path, monkeypatch):
    """Every example in the module's docstrings (module, classes, functions) runs as shown."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
