"""DVC stage `report`: figures (PDF + PNG), LaTeX tables and the paper's numbers into paper/, from results/, the
training photos (sample grids) and the training settings of params.yaml (settings table)."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.layout import DATASET
from dreamstudy.report import Settings, load_results, write_report
from dreamstudy.report.ablation import write_ablation_report


def main(argv=None) -> None:
    args, p = stage_args("report", __doc__, argv)
    layout = args.layout
    results = load_results(layout.results, memorization_threshold=p.eval.memorization_threshold)
    if args.study == "ablation":
        written = write_ablation_report(results, layout.paper)
    else:
        dreambench = load_dataset(DATASET)
        settings = Settings({method: getattr(p.train, method) for method in results.methods},
                            p.priors.num_images, p.priors.weight, p.aug.strength)
        written = write_report(results, layout.paper, settings=settings,
                               photos={s: dreambench.subjects[s].images for s in results.subjects})
    for path in written:
        print(path)


if __name__ == "__main__":
    run_stage(main)
