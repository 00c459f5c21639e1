"""Modules that can be called like their main function.

``eelsgpu.thickness`` is both a module (formulas, kernels) and the function users call,
``eelsgpu.thickness(si, ...)``; the same holds for ``kramers_kronig`` and ``bandgap``. Python
binds a submodule to its package's attribute when it is imported, which would hide a function of
the same name, so these modules make themselves callable instead: calling the module calls the
function of the same name inside it.
"""

from __future__ import annotations

import sys
import types


class CallableModule(types.ModuleType):
    """A module whose call is its function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_module_callable(name: str) -> None:
    """Make ``sys.modules[name]`` callable (call it at the end of the module)."""
    sys.modules[name].__class__ = CallableModule
