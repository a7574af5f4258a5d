"""Command-line interface: parse options, call the library, print, set the exit code.

Each module in this package defines the command of its own name on the group
in `group.py`. The group imports a module only when its command is used, so
adding a command needs no edit here.
"""
from ctspine_builder.cli.group import main

__all__ = ["main"]
