"""``python -m celeriac``: the ``celeriac`` command.

A pool that must patch the process (gevent, eventlet) does so before the
command line module and everything it imports are loaded.
"""

import sys

from .patching import patch_for_command_line

patch_for_command_line(sys.argv[1:])

from .cli import main  # noqa: E402 - after the patch, on purpose

main()
