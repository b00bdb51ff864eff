"""DVC stage `sample_multi`: a pair's composition prompts from one variant's model, with regions
(`--variant <variant>@regions`: the first subject's prompt in multi.regions[0], the second's in [1]) or not;
without regions also each subject alone on its DreamBench prompts, with the main study's seeds (retention)."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.augment.dataset import instance_caption
from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.io import atomic_dir
from dreamstudy.layout import BASELINE, DATASET, key_subjects
from dreamstudy.methods import get_method
from dreamstudy.models.loading import load_pipeline
from dreamstudy.multi.prompts import pair_specs
from dreamstudy.multi.regions import Region, regions_installed
from dreamstudy.multi.variants import parse_sample_label, variant_method
from dreamstudy.sampling.protocol import dreambench_specs
from dreamstudy.sampling.sample import generate, speed_up, use_scheduler


def main(argv=None) -> None:
    args, p = stage_args("sample_multi", __doc__, argv)
    variant, regional = parse_sample_label(args.variant)
    dataset = load_dataset(DATASET)
    subjects = [dataset.subjects[name] for name in key_subjects(args.pair)]
    method, _ = get_method(variant_method(variant), p.train)
    tokens = [method.token(p.train.identifiers[s.name]) for s in subjects]
    specs = pair_specs(subjects, tokens=tokens, num_prompts=p.multi.prompts_per_pair,
                       images_per_prompt=p.multi.images_per_prompt, seed=p.seed)
    model_dir = args.layout.model(variant, BASELINE, args.pair)
    pipe = load_pipeline(p.model.pretrained)
    method.load_into(pipe, model_dir)
    use_scheduler(pipe, p.sample.scheduler)
    speed_up(pipe, compile=p.sample.compile, channels_last=p.sample.channels_last)
    resolution = p.model.resolution
    options = {}
    if regional:  # each subject's own prompt in its box
        regions = [Region(box, instance_caption(token, s.class_name))
                   for box, token, s in zip(p.multi.regions, tokens, subjects, strict=True)]
        options["around"] = lambda prompts: regions_installed(pipe, regions, prompts, height=resolution,
                                                              width=resolution, guidance_scale=p.sample.guidance_scale)
    settings = dict(resolution=resolution, num_inference_steps=p.sample.num_inference_steps,
                    guidance_scale=p.sample.guidance_scale, batch_size=p.sample.batch_size, model_dir=model_dir)
    drawn = {"model": p.model.pretrained, "scheduler": p.sample.scheduler,
             "num_inference_steps": p.sample.num_inference_steps}
    generate(pipe, specs, args.layout.samples(args.variant, BASELINE, args.pair), **settings, **options,
             extra={"variant": variant, "regions": regional, "subjects": key_subjects(args.pair), "tokens": tokens,
                    **drawn})
    if regional:
        return
    # retention: the run key (variant, pair, subject) of metrics.multi.alone_scores
    with atomic_dir(args.layout.retention(variant, args.pair)) as tmp:
        for subject, token in zip(subjects, tokens, strict=True):
            alone = dreambench_specs(subject, identifier=token, num_prompts=p.data.prompts_per_subject,
                                     images_per_prompt=p.sample.images_per_prompt, seed=p.seed)
            generate(pipe, alone, tmp / subject.name, **settings,
                     extra={"class": subject.class_name, "method": variant, "strategy": args.pair,
                            "identifier": token, **drawn})


if __name__ == "__main__":
    run_stage(main)
