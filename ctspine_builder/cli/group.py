"""The `ctspine` command group, its global options and error handling."""
from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from ctspine_builder import __version__
from ctspine_builder.errors import CtspineError

logger = logging.getLogger("ctspine_builder")


# The package whose modules each define the top-level command of their own name.
COMMANDS_PACKAGE = "ctspine_builder.cli"


class CtspineGroup(click.Group):
    """A click group that loads commands lazily and reports CtspineError cleanly.

    Each module of the cli package defines the command of its own name, and a
    module is imported only when its command runs (or help lists it). So
    `ctspine convert` does not pay for importing datasets, huggingface_hub or
    the HTTP stack, which took about 1 s of its start-up on 2 cores.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        package = importlib.import_module(COMMANDS_PACKAGE)
        names = {module.name for module in pkgutil.iter_modules(package.__path__)}
        return sorted((names - {"group"}) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.list_commands(ctx):
            importlib.import_module(f"{COMMANDS_PACKAGE}.{cmd_name}")
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CtspineError as error:
            click.secho(f"Error: {error.format()}", fg="red", err=True)
            sys.exit(1)


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever sys.stderr is at emit time.

    A plain StreamHandler keeps the stream it was created with, which breaks
    when the command runs inside a caller that swaps sys.stderr (click's
    CliRunner, a notebook) and later closes it.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbosity: int) -> None:
    """Send the package's log records to stderr at a level set by -v/-q.

    Records still propagate to the root logger, which the CLI leaves without
    handlers, so a program or test harness that configures logging receives them.
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)


@click.group(cls=CtspineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctspine")
@click.option("-v", "--verbose", count=True, help="Log more: -v for each stage per case, -vv for debug detail.")
@click.option("-q", "--quiet", is_flag=True, help="Log errors only and hide progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Rebuild, verify and publish the CTSpine1K spine CT dataset.

    Run `ctspine demo --out DIR` to build a small synthetic dataset with no
    network, or `ctspine COMMAND --help` for the options of each command.
    """
    verbosity = -1 if quiet else verbose
    configure_logging(verbosity)
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbosity
