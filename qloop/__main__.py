"""qloop's command line: ``python -m qloop {info,bench,echo}``."""
import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m qloop", description=__doc__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="print qloop's version, the Python and the backends in use")
    sub.add_parser("bench", add_help=False,
                   help="benchmark qloop against the installed peers (-h for options)")
    sub.add_parser("echo", help="QIOChannel echo server + clients on loopback (round trips/s)",
                   add_help=False)
    a, rest = p.parse_known_args(argv)
    if a.command == "bench":
        from ._bench import main as bench_main
        return bench_main(rest)
    if a.command == "echo":
        from ._echo import main as echo_main
        return echo_main(rest)
    if a.command == "info":
        from ._info import main as info_main
        return info_main(rest)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
