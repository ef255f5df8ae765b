"""``python3 -m pipegate_plugin [MODULE_OR_FILE_OR_BUNDLE_DIR ...]``: the plugin runner."""

import sys

from .runner import main

sys.exit(main())
