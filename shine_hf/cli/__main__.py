"""`python -m shine_hf.cli`: the `shine` command."""

from . import app

app(prog_name="shine")
