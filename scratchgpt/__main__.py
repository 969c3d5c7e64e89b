import sys

from scratchgpt.cli import main

sys.exit(main())
