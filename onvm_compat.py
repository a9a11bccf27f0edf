"""Makes Ryu 4.34 import on eventlet 0.33.3.

`ryu.app.wsgi` imports `eventlet.wsgi.ALREADY_HANDLED`, which eventlet 0.33
no longer has.  A `.pth` file in the virtual environment imports this module
at interpreter start-up (so `ryu-manager` gets it too, not only
`onvm controller`); it installs an import hook that adds the name right after
`eventlet.wsgi` is loaded.  Nothing is imported eagerly: start-up of
unrelated programs stays as fast as before.
"""
import importlib.abc
import sys

_TARGET = "eventlet.wsgi"


class _AddAlreadyHandled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            if not hasattr(module, "ALREADY_HANDLED"):
                # eventlet <0.30 used a sentinel object here; Ryu only
                # returns it from handlers, eventlet never inspects it now.
                module.ALREADY_HANDLED = object()

        spec.loader.exec_module = exec_module
        return spec


def install():
    if "eventlet.wsgi" in sys.modules:
        mod = sys.modules["eventlet.wsgi"]
        if not hasattr(mod, "ALREADY_HANDLED"):
            mod.ALREADY_HANDLED = object()
        return
    if not any(isinstance(f, _AddAlreadyHandled) for f in sys.meta_path):
        sys.meta_path.insert(0, _AddAlreadyHandled())


install()
