"""`python -m pear_edge.cli`: the same as the `pear-edge` command."""
import sys

from pear_edge.cli import main

sys.exit(main())
