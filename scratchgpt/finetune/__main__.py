import sys

from scratchgpt.finetune.commands import main

sys.exit(main())
