#!/usr/bin/env bash
# Forward check: rerun the parity tests (mark `peer`) against the newest releases of the peers,
# without tests/constraints.txt, and report which tests moved.  Informational: always exits 0,
# so a peer's release shows up here the day it lands, not in a user's run, and never turns CI red.
# Run it in a venv where the README's test command has run (.ci/run does so last).
set -uo pipefail
cd "$(dirname "$0")/.."
PEERS="sentence-transformers bm25s pytrec-eval-terrier faiss-cpu datasets PyStemmer transformers"
echo "== forward check: newest releases of the peers, torch held at 2.13.0 =="
before=$(python -m pip freeze 2>/dev/null)
# torch stays pinned: a bare upgrade could pull a multi-GB CUDA build
if ! python -m pip install -q --upgrade "torch==2.13.0" $PEERS 2>/tmp/forward_pip.log; then
  echo "forward check: the newest peers do not install beside torch 2.13.0:"
  grep -v WARNING /tmp/forward_pip.log | tail -5
  exit 0
fi
after=$(python -m pip freeze 2>/dev/null)
moved=$(diff <(echo "$before") <(echo "$after") | grep '^>' | sed 's/^> //')
if [ -z "$moved" ]; then
  echo "forward check: every peer is already at its newest release (tests/constraints.txt is current)"
  exit 0
fi
echo "releases newer than the pins:"
echo "$moved" | sed 's/^/  /'
python -m pytest -q -m peer tests -p no:cacheprovider -o addopts="" --tb=line -rf >/tmp/forward_tests.log 2>&1
rc=$?
if [ $rc -eq 0 ]; then
  echo "forward check: every parity test still passes on the newest peers"
else
  echo "forward check: parity tests that moved with the newest peers (follow the new release, then update the pins):"
  grep -E '^FAILED|^ERROR' /tmp/forward_tests.log | sed 's/^/  /'
  tail -1 /tmp/forward_tests.log
fi
exit 0
