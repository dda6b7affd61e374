"""`python -m workers`: one worker process, driven through its stdin/stdout
control pipe by the coordinator (see workers.control and multiraft.protocol)."""

import sys

from workers.control import main

sys.exit(main())
