"""The ``mi-course`` command: ``build`` the student notebooks, ``grade`` submissions."""

from __future__ import annotations

import sys

COMMANDS = {
    "build": "write notebooks/ from solutions/ (--check: fail if stale; --execute: run solutions first)",
    "grade": "grade submitted notebooks under nbval: gradebook.csv and feedback per student",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print("usage: mi-course COMMAND [ARGS]\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:8} {what}")
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nmi-course: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    if command == "build":
        from mi_course.build import main as build_main

        return build_main(rest)
    if command == "grade":
        from mi_course.grade import main as grade_main

        return grade_main(rest)
    raise AssertionError(command)  # every name in COMMANDS is handled above


if __name__ == "__main__":
    raise SystemExit(main())
