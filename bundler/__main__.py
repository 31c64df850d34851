"""``python -m bundler`` runs the airlock command line."""

import sys

from bundler.cli import main

sys.exit(main())
