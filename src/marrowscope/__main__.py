import sys

from marrowscope.apps.cli import main

sys.exit(main())
