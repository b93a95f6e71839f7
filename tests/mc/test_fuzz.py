"""The fuzzer's short form (fuzz.py; make check-fuzz runs it 30 min).

First a real pair through a recording proxy: seeds for the fuzzer, and
a checksum-valid checkpoint with a bad record after its RAM pages, which
the standby must refuse without applying any of it and later resume from
the checkpoint before.  Then the fuzzer on those seeds for a fixed time
(MC_FUZZ_SECONDS, 90 by default): no crash, hang, leak or oracle abort.
"""

import os
import shutil

import fuzz
from mcvm import workdir


def test_malformed_checkpoint_keeps_last():
    shutil.rmtree(fuzz.SEEDS, ignore_errors=True)
    assert fuzz.record(workdir('fuzz-record')) >= 3


def test_fuzz_budget():
    seconds = os.environ.get('MC_FUZZ_SECONDS', '90')
    assert fuzz.main(['--seconds', seconds]) == 0, \
        'the fuzzer found something: see build/fuzz/artifacts'
