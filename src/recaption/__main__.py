"""`python -m recaption`: the `recap` CLI (how `accelerate launch -m recaption` runs it)."""

from recaption.cli import app

app()
