"""The fine-tuned side on questions a person wrote before seeing the generated ones (issue 34).

Copies the two Debian documents of data/qa/written_first/ into a scratch folder, ingests them into a scratch store,
builds a dataset and trains an adapter with the defaults, then runs `eval` (rag, ft) on the written questions.
Every step is the public CLI; the times are printed beside it.

    .venv/bin/python scripts/measure_written_first.py [--store /tmp/written-first]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "data" / "qa" / "written_first"
SOURCES = {"nodejs-governance.md": "/usr/share/doc/nodejs/GOVERNANCE.md",
           "nss-mdns-README.md": "/usr/share/doc/libnss-mdns/README.md.gz"}


def run(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backends", *args], cwd=ROOT, check=True)
    return round(time.perf_counter() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="/tmp/written-first")
    args = parser.parse_args()
    store = Path(args.store)
    shutil.rmtree(store, ignore_errors=True)
    docs = store.parent / f"{store.name}-docs"
    shutil.rmtree(docs, ignore_errors=True)
    docs.mkdir(parents=True)
    for name, source in SOURCES.items():
        data = Path(source).read_bytes()
        (docs / name).write_bytes(gzip.decompress(data) if source.endswith(".gz") else data)
    where = ["--store", str(store)]
    times = {"ingest": run("ingest", str(docs), *where),
             "build": run("dataset", "build", "--out", str(store / "datasets" / "written-first"), *where),
             "train": run("train", "--data", str(store / "datasets" / "written-first" / "train.jsonl"),
                          "--name", "written-first", *where),
             "eval": run("eval", "--set", str(SET / "questions.jsonl"), "--systems", "rag,ft", "--adapter",
                         "written-first", "--out", str(store / "eval"), *where)}
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    built = json.loads((store / "datasets" / "written-first" / "dataset.json").read_text())
    print(json.dumps({"seconds": times, "dataset": built["counts"], "metrics": {s: {k: metrics["metrics"][s][k] for k in ("contains", "f1", "count") if k in metrics["metrics"][s]} for s in metrics["systems"]}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
