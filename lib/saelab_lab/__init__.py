"""The saelab project's own lab tooling: the reference runs behind the numbers of README.md and
papers/*/README.md, their freshness, and the tables generated from them.

This is not part of the library: `import saelab` never imports it, and a user of saelab needs
none of it. It is installed beside `saelab` only so that the project's Makefile and tests can
run it with one command:

    python -m saelab_lab check           # what `make test` gates on (below), and what changed
    python -m saelab_lab check --strict  # `make check-reference`: fails on changed notebooks too
    python -m saelab_lab tables          # rewrite the generated tables in place
    python -m saelab_lab regenerate      # `make reference`: rerun reference runs, then tables

Freshness is shown, not a gate on every edit (ARCHITECTURE.md §9). `make test` fails when a
generated table differs from the runs it cites, or when a cited run did not complete or was made
from a dirty tree. A run whose notebook changed after it ran is marked where its numbers appear
(the table's caption says so, with the commit the run was made at) and listed by `check`;
`check --strict` fails on it, for the moment before a result is published.
"""
