"""DVC stage `report_multi`: the multi-concept study's table, fidelity-vs-CLIP-T plane and sample grids into
paper/multi/, from results/multi/ and the training photos (first in the sample grids)."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.layout import DATASET
from dreamstudy.report.multi import write_multi_report


def main(argv=None) -> None:
    args, _ = stage_args("report_multi", __doc__, argv)
    photos = {name: subject.images for name, subject in load_dataset(DATASET).subjects.items()}
    for path in write_multi_report(args.layout.metrics, args.layout.samples_root, photos, args.layout.paper):
        print(path)


if __name__ == "__main__":
    run_stage(main)
