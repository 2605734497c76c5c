"""What every subcommand shares: exit codes, error reporting, opening the store."""

from __future__ import annotations

import sys

import click

import featstore

#: Some clips failed (they are recorded; the others are done). Re-running retries only those.
EXIT_PARTIAL = 3


def fail(message: str) -> None:
    """Print ``featstore: error: MESSAGE`` to stderr and exit with status 1."""
    click.echo(f"featstore: error: {message}", err=True)
    sys.exit(1)


def open_store(store_url: str) -> featstore.Store:
    """Open the store at ``store_url`` or fail with its error."""
    try:
        return featstore.open_store(store_url)
    except featstore.StoreError as exc:
        fail(str(exc))
        raise  # unreachable
