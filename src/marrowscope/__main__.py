import sys

from marrowscope.cli import main

sys.exit(main())
