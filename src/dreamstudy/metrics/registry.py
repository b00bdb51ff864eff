"""Every metric of the study, once: its column name, what one value of it describes, its label, which way is
better and where the study reports it. The evaluate and gather stages, the statistics and the report take their
metrics from METRICS, so that a new metric is one entry here and the code that computes its values.

Pandas-free and torch-free: the gather and report stages import it."""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("image", "prompt", "subject")  # what one value of a metric describes, each within the next


@dataclass(frozen=True)
class Metric:
    name: str  # its column in the score files and tables, its `metric` in stats.csv, tests.csv and breakdown.csv
    # One of LEVELS: "image" (a generated image), "prompt" (the images of one prompt of a subject) or "subject"
    # (a run's subject, e.g. its PRES images). Its means per prompt, subject and run start there.
    level: str
    label: str  # in figures and tables
    direction: int  # +1: higher is better, -1: lower is better
    # The report's table with a column for it: "main" (DreamBench's scores: also the per-subject table, the
    # scores figure and the first columns of per_image.csv) or "overfitting". Only these are in summary.json
    # (and, of images, in breakdown.csv); None: a raw value that others are made from.
    table: str | None = None
    interval: bool = False  # a bootstrap CI in stats.csv and a paired test against `none` in tests.csv
    headline: bool = False  # in headline.json, the few numbers `dvc exp show` lists
    published: bool = False  # a column of report/published.csv: the papers report it
    real_images: bool = False  # also measured among the subject's own photos: the "Real images" upper bound
    meaning: str = ""  # what a value says, after the label on figures
    per_found: bool = False  # of an image's detected subjects (multi-concept crops): NaN where none is found

    @property
    def nullable(self) -> bool:
        """May be NaN: DIV of a prompt with one image, PRES without PRES images, PRES (base) without class
        images, a crop's score where the detector found no subject; otherwise an image always has its scores."""
        return self.level != "image" or self.per_found


DINO = Metric("dino", "image", "DINO", +1, table="main", interval=True, headline=True, published=True,
              real_images=True, meaning="subject fidelity")
CLIP_I = Metric("clip_i", "image", "CLIP-I", +1, table="main", interval=True, published=True, real_images=True)
CLIP_T = Metric("clip_t", "image", "CLIP-T", +1, table="main", interval=True, headline=True, published=True,
                meaning="prompt fidelity")
# an image's cosine to the closest training photo: a copy of one scores 1
MEM_DINO = Metric("mem_dino", "image", "max DINO to a training image", -1)
MEM_CLIP_I = Metric("mem_clip_i", "image", "max CLIP-I to a training image", -1)
DIV = Metric("div", "prompt", "DIV", +1, table="overfitting", interval=True, published=True,
             meaning="higher: more diverse")
PRES = Metric("pres", "subject", "PRES", -1, table="overfitting", interval=True, published=True,
              meaning="lower: better prior preservation")
PRES_BASE = Metric("pres_base", "subject", "PRES (base)", -1, table="overfitting")  # the base model's PRES
# an image whose MEM_DINO exceeds eval.memorization_threshold (the gather decides); its means are shares
MEMORIZED = Metric("memorized", "image", "Memorized", -1, table="overfitting", interval=True,
                   meaning="share above the threshold")

# In the order of the columns of the score files and tables, of stats.csv's metrics and of the report's tables.
METRICS = (DINO, CLIP_I, CLIP_T, MEM_DINO, MEM_CLIP_I, DIV, PRES, PRES_BASE, MEMORIZED)

# The multi-concept study's (metrics/multi.py), each image of a pair against each subject's photos, in its own
# table ("multi"): the mean over the two subjects, and the minimum (an image missing one subject scores low).
DINO_MEAN = Metric("dino_mean", "image", "DINO (mean)", +1, table="multi", interval=True)
DINO_MIN = Metric("dino_min", "image", "DINO (min)", +1, table="multi", interval=True, headline=True,
                  meaning="the less faithful subject")
CLIP_I_MEAN = Metric("clip_i_mean", "image", "CLIP-I (mean)", +1, table="multi", interval=True)
CLIP_I_MIN = Metric("clip_i_min", "image", "CLIP-I (min)", +1, table="multi", interval=True)
CLIP_SCORE = Metric("clip_score", "image", "CLIPScore", +1, table="multi", interval=True,
                    meaning="2.5 x max(CLIP-T, 0)")
# Of the subjects OWLv2 finds in an image (metrics/detector.py), in their own table ("crops"): each found subject's
# crop against its own photos, and whether the crop looks more like the other subject's photos (DINO).
BOTH_FOUND = Metric("both_found", "image", "Both found", +1, table="crops", interval=True,
                    meaning="share of images where the detector finds both subjects")
CROP_DINO = Metric("crop_dino", "image", "DINO (crops)", +1, table="crops", interval=True, per_found=True,
                   meaning="a found subject's crop against its photos")
CROP_CLIP_I = Metric("crop_clip_i", "image", "CLIP-I (crops)", +1, table="crops", interval=True, per_found=True)
MIXING = Metric("mixing", "image", "Identity mixing", -1, table="crops", interval=True, per_found=True,
                meaning="share of crops closer (DINO) to the other subject's photos")
CROP_METRICS = (BOTH_FOUND, CROP_DINO, CROP_CLIP_I, MIXING)
MULTI_IMAGE_METRICS = (CLIP_T, CLIP_SCORE, DINO_MEAN, DINO_MIN, CLIP_I_MEAN, CLIP_I_MIN, *CROP_METRICS)
MULTI_METRICS = (*MULTI_IMAGE_METRICS, DIV)  # stats.csv's order; each table's columns: its metrics in this order
