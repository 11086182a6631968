"""The detoxops Streamlit dashboard: `streamlit run dashboards/app.py` (see docs/dashboard.md).

It reads what runs recorded (MLflow, DVC metadata) and never recomputes, except the 'Try it' page, which
detoxifies one image with a registered purifier and victim.
"""
