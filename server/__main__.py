"""`python -m server` is the `rating` command."""

import sys

from server.cli import main

sys.exit(main())
