"""`python -m novapurge` runs the CLI."""
from novapurge.cli import main

main()
