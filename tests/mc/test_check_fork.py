"""scripts/check-fork must catch each kind of fork-rule break."""

import os
import shutil
import subprocess
import tempfile

from mcvm import BUILD, TOP


def run_check(tree):
    return subprocess.run(['bash', os.path.join(tree, 'scripts', 'check-fork')],
                          capture_output=True, text=True,
                          env=dict(os.environ, MC_BUILD_DIR=BUILD))


def clone():
    """A throwaway git repository holding this working tree as it is."""
    tree = tempfile.mkdtemp(prefix='mc-fork-')
    files = subprocess.run(['git', '-C', TOP, 'ls-files', '-z', '--cached',
                            '--others', '--exclude-standard'],
                           capture_output=True, check=True).stdout
    for f in filter(None, files.decode().split('\0')):
        if os.path.exists(os.path.join(TOP, f)):
            os.makedirs(os.path.dirname(os.path.join(tree, f)), exist_ok=True)
            shutil.copy2(os.path.join(TOP, f), os.path.join(tree, f))
    subprocess.run(['git', '-C', tree, 'init', '-q'], check=True)
    subprocess.run(['git', '-C', tree, 'add', '-A'], check=True)
    return tree


def add(tree, path, text):
    os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
    with open(os.path.join(tree, path), 'a') as f:
        f.write(text)
    subprocess.run(['git', '-C', tree, 'add', path], check=True)


def test_check_fork_catches_violations():
    tree = clone()
    try:
        r = run_check(tree)
        assert r.returncode == 0, r.stdout + r.stderr
        assert 'footprint:' in r.stdout

        # An overlay file that would replace an upstream file.
        add(tree, 'migration/ram.c', '/* replaced */\n')
        r = run_check(tree)
        assert r.returncode != 0 and 'migration/ram.c' in r.stdout, r.stdout
        subprocess.run(['git', '-C', tree, 'rm', '-qf', 'migration/ram.c'], check=True)

        # A registry host name (assembled here so this file holds none).
        add(tree, 'docs/devel/x.txt', 'see http://%s.%s.org/\n' % ('deb', 'debian'))
        r = run_check(tree)
        assert r.returncode != 0 and 'registry host' in r.stdout, r.stdout
        subprocess.run(['git', '-C', tree, 'rm', '-qf', 'docs/devel/x.txt'], check=True)

        # A patch that does not apply.
        with open(os.path.join(tree, 'patches', 'broken.patch'), 'w') as f:
            f.write('--- a/VERSION\n+++ b/VERSION\n@@ -1 +1 @@\n-9.9.9\n+10.0.0\n')
        with open(os.path.join(tree, 'patches', 'series'), 'a') as f:
            f.write('broken.patch\n')
        r = run_check(tree)
        assert r.returncode != 0 and 'does not apply' in r.stdout, r.stdout
    finally:
        shutil.rmtree(tree, ignore_errors=True)
