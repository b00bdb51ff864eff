"""DVC stage `train`: fine-tune one method on one subject's (augmented) training set."""

from dvclive import Live

from dreamstudy.augment import read_training_set
from dreamstudy.cli import stage_args
from dreamstudy.io import atomic_dir
from dreamstudy.methods import get_method
from dreamstudy.methods.trainer import train
from dreamstudy.models.loading import load_components
from dreamstudy.seeding import derive_seed


def main(argv=None) -> None:
    args, p = stage_args(__doc__, ("subject", "method", "strategy"), argv)
    run = f"{args.method}/{args.strategy}/{args.subject}"
    method, schedule = get_method(args.method, p.train)
    examples = read_training_set(f"data/augmented/{args.strategy}/{args.subject}")
    parts = load_components(p.model.pretrained)
    with Live(f"results/train/{run}", dvcyaml=None, save_dvc_exp=False, report=None) as live:
        def log(step: int, loss: float) -> None:
            live.log_metric("loss", loss)
            live.next_step()

        train(method, schedule, parts, examples, resolution=p.model.resolution,
              seed=derive_seed(p.seed, "train", run), log=log)
    with atomic_dir(f"models/{run}") as out:
        method.save(parts, out)


if __name__ == "__main__":
    main()
