#!/usr/bin/env python3
"""ci/valgrind-filter.py LOG: print the memcheck records of LOG that concern
qloop code (an error whose top three frames, or a definite leak with any
allocation frame, in libqloop (ql_*), the glue (qlpy_*), the _qloop module or
csrc/); exit 1 if there is any."""
import re
import sys

text = open(sys.argv[1]).read().splitlines()
recs, cur = [], []
for line in text:
    body = re.sub(r'^==\d+== ?', '', line)
    if body.strip() == '':
        if cur: recs.append(cur); cur = []
    else:
        cur.append(body)
if cur: recs.append(cur)
OURS = re.compile(r'(\bql_|\bqlpy_|_qloop|libqloop|csrc/)')
KIND = re.compile(r'^(Invalid|Conditional jump|Use of uninitialised|Syscall param|Mismatched|Source and destination overlap|.*definitely lost in loss record|.*free\(\))')
bad = []
for r in recs:
    if not KIND.match(r[0]):
        continue
    frames = [l for l in r[1:] if re.match(r'\s+(at|by) ', l)]
    if 'definitely lost' in r[0]:
        hit = any(OURS.search(f) for f in frames)
    else:
        hit = any(OURS.search(f) for f in frames[:3])
    if hit:
        bad.append(r)
for r in bad:
    print("\n".join(r)); print()
print("qloop-related memcheck records: %d" % len(bad))
sys.exit(1 if bad else 0)
