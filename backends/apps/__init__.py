"""Apps over the service: evaluation, reports and charts, the CLI and the bench (the Streamlit pages live in pages/)."""
