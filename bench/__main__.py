"""``python -m bench``: every benchmark section, one markdown table each."""

import sys

from bench.run import main

sys.exit(main())
