"""``python -m gpucnn``: the same as the ``gpucnn`` command."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: one line, no traceback
    print("gpucnn: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
