#!/usr/bin/env python
"""Django's command-line utility for the django_bank example."""

import os
import sys
from pathlib import Path


def main() -> None:
    # The example is the package examples.django_bank inside the memimg repository.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_bank.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
