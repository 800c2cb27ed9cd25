"""`python -m weights.tiny DIR`: write tiny random stand-ins of the four weights folders into DIR, offline.

The command is the contract (docs/DESIGN.md, "Configuration"); the builder itself is test support and lives
in `testkit.tiny_weights`, beside the other fakes. This module only keeps the documented command working.
"""

from testkit.tiny_weights import main

if __name__ == "__main__":
    main()
