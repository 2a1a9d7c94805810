"""``python -m spanfaas``: the same as the ``spanfaas`` script."""

from spanfaas.cli import main

main()
