"""Reading the primary's MC trace (the log backend's lines), for the
benchmark scripts."""

import re


def _epochs(trace, pattern, first, last):
    """The matches of @pattern (its first group the epoch) in the lines
    of @trace for checkpoints first..last."""
    with open(trace) as f:
        for line in f:
            m = re.search(pattern, line)
            if m and first <= int(m.group(1)) <= last:
                yield m


def takes(trace, first, last):
    """(pages, bytes, pause_us) of checkpoints first..last, from the
    mc_checkpoint_take lines of @trace."""
    return [tuple(int(m.group(i)) for i in (2, 3, 4))
            for m in _epochs(trace, r'mc_checkpoint_take epoch (\d+) pages '
                             r'(\d+) bytes (\d+) pause (\d+) us', first, last)]


def harvests(trace, first, last):
    """Microseconds each checkpoint first..last spent harvesting the dirty
    log (the migration bitmap sync, KVM's dirty log or ring with it), from
    the mc_checkpoint_phases lines of @trace."""
    return [int(m.group(2))
            for m in _epochs(trace, r'mc_checkpoint_phases epoch (\d+) stop '
                             r'-?\d+ harvest (-?\d+) ', first, last)]
