"""Command-line interface: parse options, call the library, print, set the exit code.

Each module in this package registers its commands on the group in
`group.py`; importing the package imports them all, so adding a command
needs no edit here.
"""
import importlib
import pkgutil

from ctspine_builder.cli.group import main

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "group":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["main"]
