"""``python -m ssvit <command> ...`` = the ``ssvit`` console script."""
from ssvit.cli.main import console

console()
