"""``python -m gen_durable``: the ``gen-durable`` command line."""

import sys

from .cli import main

sys.exit(main())
