"""``python -m data_modules.convert <what> ...``: one sub-command per kind of data."""
from __future__ import annotations

import argparse
import sys

from . import concat, features, images, merge

# sub-command -> module with add_arguments(parser) and run(args) -> exit code
COMMANDS = {"features": features, "concat": concat, "merge": merge, "images": images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_modules.convert",
                                     description="Convert public data formats to lightning-vl's files.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=module.CLI_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
