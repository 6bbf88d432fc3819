"""The ``mi-course`` command: ``build`` the student notebooks, ``grade`` submissions."""

from __future__ import annotations

import sys
from importlib.util import find_spec

COMMANDS = {
    "build": "write notebooks/ from solutions/ (--check: fail if stale; --execute: run solutions first)",
    "grade": "grade submitted notebooks under nbval: gradebook.csv and feedback per student",
    "mystery": "write one capstone mystery model per student of a roster (--roster, --out, --secret-file)",
}
# What each command needs from the `instructor` extra; the notebooks need none of it.
_TOMLI = ("tomli",) if sys.version_info < (3, 11) else ()  # mi_course.build reads pyproject.toml
TOOLS = {
    "build": ("nbformat", "nbclient", "ipykernel", *_TOMLI),  # --execute runs notebooks in a kernel
    "grade": ("nbformat", "pytest", "nbval", *_TOMLI),
    "mystery": (),
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
    missing = [name for name in TOOLS[command] if find_spec(name) is None]
    if missing:
        print(f"mi-course {command} needs the instructor tools ({', '.join(missing)} missing): pip install 'mi-course[instructor]'", file=sys.stderr)
        return 2
    if command == "build":
        from mi_course.build import main as build_main

        return build_main(rest)
    if command == "grade":
        from mi_course.grade import main as grade_main

        return grade_main(rest)
    if command == "mystery":
        from mi_course.mystery import main as mystery_main

        return mystery_main(rest)
    raise AssertionError(command)  # every name in COMMANDS is handled above


if __name__ == "__main__":
    raise SystemExit(main())
