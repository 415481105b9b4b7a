import sys

from local_triton.launcher import main

sys.exit(main())
