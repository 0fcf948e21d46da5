"""Identity QC of generated images (and, for the video stage, of clip frames): analysis, decision, pool,
stream, report and the stage itself (``qc.stage``). Above ``vision/`` (face models, image processing) and
``dataset/``; the user's verdicts (``review/``) sit above QC and reach it through one hook
(``qc.report.VerdictOverrides``). Import from the modules; this package imports nothing (the CLI starts fast)."""
