"""``python -m bundler`` runs the airlock command line."""

import sys

from bundler.cli.main import main

sys.exit(main())
