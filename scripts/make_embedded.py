"""Make the embedded DreamBench: all 30 subjects downscaled to small JPEGs, committed in the repository.

    python scripts/make_embedded.py --src /work/shared/dreambench --out data/embedded/dreambench --size 128

The source is verified against the pinned list src/dreamstudy/data/dreambench_sha256.txt and normalised
by the library (as the `fetch_data` stage does), then re-encoded as JPEG. The copy keeps DreamBench's
licence, references and prompt files (CC-BY 4.0) and gets its own SHA256SUMS.
`--pin` first (re)writes the pinned list from --src: only for a source known to be DreamBench at
dreamstudy.params.DREAMBENCH_COMMIT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from dreamstudy.data.checksums import write_sha256_list
from dreamstudy.data.fetch import DREAMBENCH_SHA256, LICENCE_FILES, PROMPTS_FILE, fetch_dreambench
from dreamstudy.io import atomic_dir


def make_embedded(src: Path, out: Path, size: int, quality: int) -> None:
    """Verify and normalise `src` with the library, then write it to `out` as JPEGs with its text files."""
    with tempfile.TemporaryDirectory() as tmp:
        normalised = Path(tmp) / "dreambench"
        fetch_dreambench("local", normalised, image_size=size, local_path=src)
        manifest = json.loads((normalised / "manifest.json").read_text())
        with atomic_dir(out) as staging:
            for subject in manifest["subjects"]:
                (staging / subject["name"]).mkdir()
                for file in subject["files"]:
                    target = staging / Path(file["source_file"]).with_suffix(".jpg")
                    with Image.open(normalised / file["file"]) as image:
                        image.save(target, "JPEG", quality=quality, optimize=True)
            for name in (*LICENCE_FILES, PROMPTS_FILE):
                shutil.copyfile(src / name, staging / name)
            write_sha256_list(staging, staging / "SHA256SUMS")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="DreamBench folder (dataset/ layout)")
    parser.add_argument("--out", type=Path, default=Path("data/embedded/dreambench"), help="replaced if present")
    parser.add_argument("--size", type=int, default=128, help="side of the square images, px")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--pin", action="store_true", help=f"rewrite {DREAMBENCH_SHA256.name} from --src first")
    args = parser.parse_args(argv)
    if args.pin:
        write_sha256_list(args.src, DREAMBENCH_SHA256)
    make_embedded(args.src, args.out, args.size, args.quality)


if __name__ == "__main__":
    main()
