"""``python -m gpucnn``: the same as the ``gpucnn`` command."""
import sys

from .cli import main

sys.exit(main())
