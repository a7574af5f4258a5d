"""The `ctspine` command group, its global options and error handling."""
from __future__ import annotations

import logging
import sys

import click

from ctspine_builder import __version__
from ctspine_builder.errors import CtspineError

logger = logging.getLogger("ctspine_builder")


class CtspineGroup(click.Group):
    """A click group that prints CtspineError messages without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CtspineError as error:
            click.secho(f"Error: {error.format()}", fg="red", err=True)
            sys.exit(1)


def configure_logging(verbosity: int) -> None:
    """Send the package's log records to stderr at a level set by -v/-q."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


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
