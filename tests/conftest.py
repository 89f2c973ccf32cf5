import sys
from pathlib import Path

# test helper modules (readme_blocks, ...) import by plain name
sys.path.insert(0, str(Path(__file__).resolve().parent))
