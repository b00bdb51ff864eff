"""DVC stage `merge_multi`: one pair's merged model (lora_sum, lora_average, custom_diffusion_merge,
textual_inversion_compose, edlora_fusion: Mix-of-Show's gradient fusion) from the main study's single-concept
models of its subjects, trained on the original images."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import atomic_dir
from dreamstudy.layout import BASELINE, Layout, key_subjects
from dreamstudy.models.loading import load_pipeline
from dreamstudy.multi.merge import merge_models
from dreamstudy.multi.variants import FUSION
from dreamstudy.params import MERGED_FROM


def main(argv=None) -> None:
    args, p = stage_args("merge_multi", __doc__, argv)
    method, main_study = MERGED_FROM[args.variant], Layout("main")
    concepts = [(main_study.model(method, BASELINE, s), SUBJECTS[s]) for s in key_subjects(args.pair)]
    pipe = load_pipeline(p.model.pretrained)
    with atomic_dir(args.layout.model(args.variant, BASELINE, args.pair)) as tmp:
        if args.variant == FUSION:
            from dreamstudy.multi.mix_of_show import fuse_edloras  # its own code: no other merge depends on it

            fusion = p.multi.fusion
            fuse_edloras(pipe, [folder for folder, _ in concepts], tmp, solver=fusion.solver,
                         text_iters=fusion.lbfgs_text_iters, unet_iters=fusion.lbfgs_unet_iters, seed=p.seed,
                         resolution=p.model.resolution)
        else:
            merge_models(args.variant, pipe, concepts, tmp)


if __name__ == "__main__":
    run_stage(main)
