"""`unimedclip <command>`: one command for every job that `accelerate launch` does not start.

The commands are the `unimedclip.commands` entry points of the installed distribution (`setup.py` lists them), each a
`main(argv, prog)` function that also runs as `python -m <module>` or as a script. They are looked up by name, so the
builders in `dataset_scripts/` add their commands without the library importing them, and only the command run is
imported.
"""

import ast
import importlib.util
import sys
from importlib.metadata import EntryPoint, entry_points

GROUP = "unimedclip.commands"


def commands() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in sorted(entry_points(group=GROUP), key=lambda entry: entry.name)}


def summary(entry: EntryPoint) -> str:
    """The first line of the command module's docstring, read without importing the module."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as file:
        docstring = ast.get_docstring(ast.parse(file.read())) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else ""


def usage(available: dict[str, EntryPoint]) -> str:
    width = max(map(len, available), default=0)
    lines = [f"  {name:<{width}}  {summary(entry)}" for name, entry in available.items()]
    return (
        "usage: unimedclip <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + (
            "\n\n`unimedclip <command> --help` describes a command. Training and fine-tuning start with "
            "`accelerate launch train.py` and `accelerate launch finetune.py` (see the README)."
        )
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = commands()
    if not available:
        raise SystemExit(
            f"unimedclip: no commands are registered under {GROUP!r}; install the project with `pip install -e .`."
        )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(available))
        return 0
    name, arguments = argv[0], argv[1:]
    if name not in available:
        print(usage(available), file=sys.stderr)
        raise SystemExit(f"\nunimedclip: unknown command {name!r}.")
    result = available[name].load()(arguments, prog=f"unimedclip {name}")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
