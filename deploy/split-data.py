#!/usr/bin/env python3
"""Split the breast-cancer CSV into three non-IID hospital partitions.

Rows are sorted by `radius_mean`, largest first (a stable sort, so ties keep
file order); hospital-a gets the first 20 %, hospital-b the next 30 %,
hospital-c the rest. Large tumours are mostly malignant, so hospital-a sees
mostly malignant cases and hospital-c mostly benign ones: a skewed, realistic
split (a referral centre vs. screening clinics). Values are copied verbatim.
This is the same split `confide demo` makes in memory.

It also writes hospital-d.csv for the four-site variant
(deploy/compose.four-sites.yml): every fourth row of the source file (rows
0, 4, 8, ...), i.e. a roughly IID sample that OVERLAPS the other three
partitions, and, the same way, hospital-e.csv for the five-site variant
(deploy/compose.five-sites.yml, used by the CI dropout scenario): every
fourth row starting at row 2 (rows 2, 6, 10, ...), disjoint from
hospital-d's sample but again overlapping a-c. That is harmless for a
resilience demo (those patients just count twice); with real sites each
holds its own data.

Usage: deploy/split-data.py [SOURCE_CSV] [OUT_DIR]
  defaults: examples/data/breast_cancer_wisconsin.csv deploy/data
"""
import csv
import hashlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "examples/data/breast_cancer_wisconsin.csv"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "deploy/data"

lines = [l for l in src.read_text().splitlines() if l.strip()]
header, body = lines[0], lines[1:]
cols = next(csv.reader(io.StringIO(header)))
col = cols.index("radius_mean")
label = cols.index("malignant")
rows = sorted(body, key=lambda l: -float(l.split(",")[col]))
n = len(rows)
cuts = [0, n * 20 // 100, n * 50 // 100, n]
out.mkdir(parents=True, exist_ok=True)
for i, name in enumerate(["hospital-a", "hospital-b", "hospital-c"]):
    part = rows[cuts[i]:cuts[i + 1]]
    text = header + "\n" + "".join(l + "\n" for l in part)
    (out / f"{name}.csv").write_text(text)
    malignant = sum(1 for l in part if l.split(",")[label].strip() == "1")
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"{name}: {len(part)} rows, {malignant} malignant, sha256 {digest}")

for name, start in [("hospital-d", 0), ("hospital-e", 2)]:
    part = body[start::4]
    text = header + "\n" + "".join(l + "\n" for l in part)
    (out / f"{name}.csv").write_text(text)
    malignant = sum(1 for l in part if l.split(",")[label].strip() == "1")
    print(f"{name}: {len(part)} rows, {malignant} malignant, sha256 {hashlib.sha256(text.encode()).hexdigest()} (overlaps a-c)")
