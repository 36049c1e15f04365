"""`python -m vbp` runs the command line."""

from vbp.cli import main

main()
