"""Reading the primary's MC trace (the log backend's lines), for the
benchmark scripts."""

import re


def takes(trace, first, last):
    """(pages, bytes, pause_us) of checkpoints first..last, from the
    mc_checkpoint_take lines of @trace."""
    out = []
    with open(trace) as f:
        for line in f:
            m = re.search(r'mc_checkpoint_take epoch (\d+) pages (\d+) '
                          r'bytes (\d+) pause (\d+) us', line)
            if m and first <= int(m.group(1)) <= last:
                out.append(tuple(int(m.group(i)) for i in (2, 3, 4)))
    return out


def harvests(trace, first, last):
    """Microseconds each checkpoint first..last spent harvesting the dirty
    log (the migration bitmap sync, KVM's dirty log or ring with it), from
    the mc_checkpoint_phases lines of @trace."""
    out = []
    with open(trace) as f:
        for line in f:
            m = re.search(r'mc_checkpoint_phases epoch (\d+) stop -?\d+ '
                          r'harvest (-?\d+) ', line)
            if m and first <= int(m.group(1)) <= last:
                out.append(int(m.group(2)))
    return out
