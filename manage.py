#!/usr/bin/env python
"""Django's command-line utility for kms."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kms.settings")
    if sys.argv[1:2] == ["run"]:
        # The one command that runs the whole system on this machine: it may start the
        # embedded PostgreSQL/Redis (and passes their URLs on), and it serves plain HTTP on
        # localhost unless told otherwise.
        os.environ.setdefault("KMS_EMBEDDED", "1")
        os.environ.setdefault("DJANGO_HTTPS", "false")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
