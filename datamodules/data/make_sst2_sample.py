"""Rebuild the shipped SST-2 / AdvGLUE sample from full copies of the original files.

    python datamodules/data/make_sst2_sample.py GLUE_SST2_DIR ADVGLUE_DEV_JSON

Keeps the original formats (GLUE TSV, AdvGLUE ``dev.json``) so that the sample goes through the same
loaders as the real files. Rows are drawn with ``random.Random(0)`` and kept in their original order.
"""

import json
import random
import sys
from pathlib import Path

out = Path(__file__).parent / "sst2_sample"


def sample_tsv(src: Path, dst: Path, n: int, seed: int) -> None:
    header, *rows = src.read_text().splitlines(keepends=True)
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    dst.write_text(header + "".join(rows[i] for i in keep))


if __name__ == "__main__":
    glue, adv = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(exist_ok=True)
    sample_tsv(glue / "train.tsv", out / "train.tsv", 2000, seed=0)
    sample_tsv(glue / "dev.tsv", out / "dev.tsv", 200, seed=1)
    advglue = json.loads(adv.read_text())
    (out / "adv_dev.json").write_text(json.dumps({"sst2": advglue["sst2"]}, indent=1))
