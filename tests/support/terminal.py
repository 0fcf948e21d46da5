"""Start a child as a terminal's foreground job would be: Ctrl-C (SIGINT) at its default action.

Why: a test suite started in the background of a non-interactive shell (``.ci/run &``, a CI runner)
ignores SIGINT by POSIX rule, and its children inherit that; ``influencer`` then rightly ignores SIGINT
too (``pacing.drain_on_signals`` keeps an ignored signal ignored). A test of what Ctrl-C does must give
its child the disposition a terminal gives it, or it tests nothing (it once passed or failed depending
on how the suite was started)."""

from __future__ import annotations

import signal


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGINT back to its default before the child starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
