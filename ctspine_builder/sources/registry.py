"""Import every source kind module so that each registers itself."""
import importlib
import pkgutil

import ctspine_builder.sources as _package

for _module in pkgutil.iter_modules(_package.__path__):
    if _module.name not in {"base", "registry"}:
        importlib.import_module(f"{_package.__name__}.{_module.name}")
