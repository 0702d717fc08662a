"""``python -m memimg``: the command line (placeholder until the CLI lands)."""

from __future__ import annotations


def main() -> None:
    from memimg.cli import cli

    cli()


if __name__ == "__main__":
    main()
