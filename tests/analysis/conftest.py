import sys
from pathlib import Path

# the fixture writer lives next to the tests; make it importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).parent))
