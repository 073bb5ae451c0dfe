"""`python -m infra.cli ...`: the same as the `pipeline` console script."""

import sys

from infra.cli.main import main

sys.exit(main())
