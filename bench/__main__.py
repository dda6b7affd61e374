"""python -m bench: the cluster benchmark (see bench/cluster.py)."""

import sys

from bench.cluster import main

sys.exit(main())
