import sys

from paretopipe.cli import main

sys.exit(main())
