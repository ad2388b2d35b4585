"""One module per dvc.yaml stage: `run(root, params)` and `main()`, plain Python (no Prefect)."""
