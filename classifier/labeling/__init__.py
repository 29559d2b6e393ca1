"""The labeling app: label store, image pool, sampling, active learning, agreement, session logic, HTTP routes.

``store`` (SQLite decisions), ``pool`` (key -> image bytes), ``sampling`` (which items to ask), ``active``
(features, retraining, rescoring), ``agreement`` (Cohen's kappa), ``session`` (one session's logic without HTTP),
``app`` (routes and access rules) and ``static/`` (the pages). ``pipelines/label.py`` is the entry script.
"""
