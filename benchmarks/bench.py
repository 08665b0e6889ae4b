"""`make bench`: the same as `stagegpt bench` (the benchmark lives in stagegpt.tools.bench)."""

import sys

from stagegpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
