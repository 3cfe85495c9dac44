#!/usr/bin/env python3
"""Resident memory of a running process by mapping, at its peak.

Usage: docs/profiling/smaps_peak.py PID

Samples /proc/PID/smaps every 0.3 s until the process exits, and prints the mappings (files,
anonymous memory) of the sample with the most resident memory, largest first. Temporary
directories, segment UUIDs and numbered files are folded so that like mappings group together.
"""
import collections
import os
import re
import sys
import time


def sample(pid):
    groups = collections.Counter()
    mapping = None
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split()
                    path = parts[5] if len(parts) > 5 else "[anon]"
                    path = re.sub(r"/tmp/\.tmp\w+/", "TMP/", path)
                    path = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "UUID", path)
                    mapping = re.sub(r"/\d+$", "/N", path)
                elif line.startswith("Rss:"):
                    groups[mapping] += int(line.split()[1])
    except OSError:
        return None
    return groups


def main():
    pid = int(sys.argv[1])
    peak_total, peak = 0, collections.Counter()
    while os.path.exists(f"/proc/{pid}"):
        groups = sample(pid)
        if groups is None:
            break
        total = sum(groups.values())
        if total > peak_total:
            peak_total, peak = total, groups
        time.sleep(0.3)
    print("peak total MB", peak_total // 1024)
    for mapping, kb in peak.most_common(25):
        print(kb // 1024, "MB", mapping)


if __name__ == "__main__":
    main()
