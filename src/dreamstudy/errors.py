"""Failures a user causes and can fix (params, data, models, a run that diverged, missing results): every
error class of these mixes in StudyError, and a stage prints one as a single `error:` line and exits 1
(cli.run_stage). Any other exception is a bug and keeps its traceback."""


class StudyError(Exception):
    """An expected failure, whose message names the thing and the fix."""
