"""DVC stage `sample`: the DreamBench prompts of one subject from one fine-tuned model."""

from dreamstudy.cli import stage_args
from dreamstudy.data.fetch import load_dataset
from dreamstudy.methods import get_method
from dreamstudy.models.loading import load_pipeline
from dreamstudy.sampling.sample import dreambench_specs, generate, use_scheduler


def main(argv=None) -> None:
    args, p = stage_args(__doc__, ("subject", "method", "strategy"), argv)
    run = f"{args.method}/{args.strategy}/{args.subject}"
    subject = load_dataset("data/dreambench").subjects[args.subject]
    method, _ = get_method(args.method, p.train)
    token = method.token(p.train.identifier)
    specs = dreambench_specs(subject, identifier=token, num_prompts=p.data.prompts_per_subject,
                             images_per_prompt=p.sample.images_per_prompt, seed=p.seed)
    pipe = load_pipeline(p.model.pretrained)
    method.load_into(pipe, f"models/{run}")
    use_scheduler(pipe, p.sample.scheduler)
    generate(pipe, specs, f"results/samples/{run}", resolution=p.model.resolution,
             num_inference_steps=p.sample.num_inference_steps, guidance_scale=p.sample.guidance_scale,
             batch_size=p.sample.batch_size,
             extra={"class": subject.class_name, "method": args.method, "strategy": args.strategy,
                    "identifier": token, "model": p.model.pretrained})


if __name__ == "__main__":
    main()
