"""``python -m gproxy``"""

from gproxy.cli import main

raise SystemExit(main())
