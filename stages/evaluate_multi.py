"""DVC stage `evaluate_multi`: CLIP-T, CLIPScore, each subject's DINO and CLIP-I (their mean and minimum), on
OWLv2's crops each found subject's DINO and CLIP-I and identity mixing, and DIV of one multi-concept run's samples,
and without regions each subject's retention (alone, against its main-study
single-concept model) -> results/multi/scores/{variant}/none/{pair}."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

import torch

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.io import atomic_dir, write_json
from dreamstudy.layout import BASELINE, DATASET, Layout, key_subjects
from dreamstudy.metrics.cache import EmbeddingCache, default_cache_root
from dreamstudy.metrics.detector import SubjectFinder, load_detector
from dreamstudy.metrics.encoders import load_encoders
from dreamstudy.metrics.multi import evaluate_pair, pair_diversity, read_pair_samples, retention_scores
from dreamstudy.metrics.multi_study import DIVERSITY, IMAGES, RETENTION
from dreamstudy.metrics.run import read_references
from dreamstudy.metrics.scores import ENCODERS
from dreamstudy.multi.variants import parse_sample_label, variant_method


def main(argv=None) -> None:
    args, p = stage_args("evaluate_multi", __doc__, argv)
    run = (args.variant, BASELINE, args.pair)
    variant, regional = parse_sample_label(args.variant)
    samples = read_pair_samples(args.layout.samples(*run))  # inputs checked before the encoders load
    references = {subject: read_references(DATASET, subject) for subject in key_subjects(args.pair)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoders = load_encoders(p.eval.pretrained_encoders, device=device, seed=p.seed)
    detector = load_detector(p.eval.pretrained_encoders, p.multi.detection.image_size, device=device, seed=p.seed)
    cache = EmbeddingCache(encoders, default_cache_root())
    finder = SubjectFinder(detector, p.multi.detection.threshold, p.multi.detection.max_iou)
    per_image = evaluate_pair(samples, references, encoders, p.eval.batch_size, cache, finder)
    div = pair_diversity(samples, encoders)
    retention = None
    if not regional:
        method, main = variant_method(variant), Layout("main")
        single = {s: (main.scores(method, BASELINE, s), (method, BASELINE, s)) for s in key_subjects(args.pair)}
        retention = retention_scores(DATASET, args.layout.retention(variant, args.pair), variant, args.pair, single,
                                     encoders, p.eval.batch_size, cache, p.seed)
    with atomic_dir(args.layout.scores(*run)) as tmp:
        per_image.to_csv(tmp / IMAGES, index=False)
        div.to_csv(tmp / DIVERSITY, index=False)
        if retention is not None:
            retention.to_csv(tmp / RETENTION, index=False)
        write_json(tmp / ENCODERS, {**encoders.describe(), "detector": detector.describe()})


if __name__ == "__main__":
    run_stage(main)
