"""`python -m aitherfwd` runs the command-line interface."""

from aitherfwd.cli import main

main()
