"""detoxops: defend image classifiers against backdoor attacks with diffusion models.

The core package holds the algorithms (data, attacks, models, diffusion, defenses, metrics) and knows nothing of
Prefect, MLflow, DVC or Streamlit; ``tasks/``, ``flows/`` and ``dashboards/`` wrap it.
"""

__version__ = "0.1.0"
