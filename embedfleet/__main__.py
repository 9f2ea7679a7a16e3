"""`python -m embedfleet`: the same as the `embedfleet` command."""

from .cli import main

main()
