"""`python -m fastconv ...` is the `fastconv` command (from outside a source checkout)."""

from .cli import console_main

console_main()
