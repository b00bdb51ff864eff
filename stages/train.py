"""DVC stage `train`: fine-tune one method on one subject's (augmented) training set."""

from dvclive import Live

from dreamstudy.cli import stage_args
from dreamstudy.data.fetch import load_dataset
from dreamstudy.methods.run import train_run


def main(argv=None) -> None:
    args, p = stage_args(__doc__, ("subject", "method", "strategy"), argv)
    run = f"{args.method}/{args.strategy}/{args.subject}"
    subject = load_dataset("data/dreambench").subjects[args.subject]
    with Live(f"results/train/{run}", dvcyaml=None, save_dvc_exp=False, report=None) as live:
        def log(step: int, loss: float) -> None:
            live.log_metric("loss", loss)
            live.next_step()

        train_run(p, subject=subject, method_name=args.method, strategy=args.strategy,
                  training_set=f"data/augmented/{args.strategy}/{args.subject}", priors_root="data/class_priors",
                  out_dir=f"models/{run}", checkpoint_dir=f"checkpoints/{run}", log=log)


if __name__ == "__main__":
    main()
