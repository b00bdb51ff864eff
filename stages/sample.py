"""DVC stage `sample`: the DreamBench prompts of one subject from one fine-tuned model."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.layout import DATASET
from dreamstudy.methods import get_method
from dreamstudy.models.loading import load_pipeline
from dreamstudy.sampling.protocol import class_images, dreambench_specs
from dreamstudy.sampling.sample import generate, speed_up, use_scheduler


def main(argv=None) -> None:
    args, p = stage_args("sample", __doc__, argv)
    cell = (args.method, args.label, args.subject)
    subject = load_dataset(DATASET).subjects[args.subject]
    method, _ = get_method(args.method, p.train)
    token = method.token(p.train.identifiers[args.subject])
    specs = dreambench_specs(subject, identifier=token, num_prompts=p.data.prompts_per_subject,
                             images_per_prompt=p.sample.images_per_prompt, seed=p.seed)
    pipe = load_pipeline(p.model.pretrained)
    method.load_into(pipe, args.layout.model(*cell))
    use_scheduler(pipe, p.sample.scheduler)
    speed_up(pipe, compile=p.sample.compile, channels_last=p.sample.channels_last)  # after the weights load
    generate(pipe, specs, args.layout.samples(*cell), resolution=p.model.resolution,
             num_inference_steps=p.sample.num_inference_steps, guidance_scale=p.sample.guidance_scale,
             batch_size=p.sample.batch_size, model_dir=args.layout.model(*cell),
             class_specs=class_images(subject.class_name, p.sample.pres_images, p.seed),
             extra={"class": subject.class_name, "method": args.method, "strategy": args.label,
                    "strength": args.strength, "identifier": token, "model": p.model.pretrained,
                    # the report labels sampling other than DreamBench's 50 DDIM steps as a deviation
                    "scheduler": p.sample.scheduler, "num_inference_steps": p.sample.num_inference_steps})


if __name__ == "__main__":
    run_stage(main)
