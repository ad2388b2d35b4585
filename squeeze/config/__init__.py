"""params.yaml: its schema, the candidate graph, files and profiles, the allow-lists, dvc.yaml's
generated parts and the import graph they come from."""
