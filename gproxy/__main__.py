"""``python -m gproxy``"""

from gproxy.ops.cli import main

raise SystemExit(main())
