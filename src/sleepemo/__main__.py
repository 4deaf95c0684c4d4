"""``python -m sleepemo <command>``: ``predict`` (apply a finished run to new recordings,
:mod:`sleepemo.predict`), ``data`` (resolve the data folder, :mod:`sleepemo.cli`)."""
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("predict", "data"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "predict":
        from sleepemo.predict.cli import cli

        return cli(argv[1:])
    from sleepemo.cli import main as data_main
    from sleepemo.errors import guarded

    guarded(lambda: data_main(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
